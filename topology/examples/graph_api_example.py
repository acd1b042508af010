"""The README's "Graphs in Python" example: join.toml declared in Python, run in this process.

Run it: python topology/examples/graph_api_example.py (tests/integration/test_graph_api.py
runs it and checks that the README shows this very code).
"""

from alto_bus import Graph


def words(text):
    yield from text.split()                  # a generator fans out: one item per word


g = Graph()
split = g.function("words", words)
upper = g.function("upper", lambda word: word.upper(), input=split, replicas=2)
length = g.function("length", lambda word: len(word), input=split)
g.aggregate("both", input=[upper, length], key="request", op="collect")

with g.run() as client:                      # a broker and 4 workers on threads of this process
    print(client.submit("to be or").result(timeout=30))
# {'upper': ['TO', 'BE', 'OR'], 'length': [2, 2, 2]}
