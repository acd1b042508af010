"""Putting a topology on machines: the topology file and its validation, GPU placement
over hosts, the per-host supervisor (`alto launch`, `alto node`), Slurm and ssh launch,
and the `alto` command."""
