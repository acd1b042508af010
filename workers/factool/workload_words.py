"""The words the FacTool workload is written with: invented names, fact templates, and the
sentences around the facts (questions, openers, remarks, verdict texts)."""

from __future__ import annotations

import random
from collections.abc import Callable

# ---------------------------------------------------------------------------------------
# Vocabulary (all invented)

_SYL = ("al ber cor dan el fen gar hal is jor kel lin mar nor os pel quin ros sel tav ul "
        "ven wen yar zel bri cal dor fal gri hen mel ner ral sto tor val vor ka lo mi ra "
        "ta ve sa ri an ev ot").split()
_PLACE_END = ("holm ford wick stad mere by ton vale burg haven dal more").split()
_ADJ = ("Silent Glass Amber Northern Hollow Winter Crimson Patient Distant Golden Quiet "
        "Broken Lantern Salt Iron Paper Velvet Restless Shallow Bright").split()
_NOUN = ("Orchard Harbour Lantern Garden Voyage Meadow Tower Letters Tide Mirror Bridge "
         "Fields Compass River Clockwork Season Archive Forest Chorus Window").split()
_FIELDS = ("music composition", "painting", "literature", "botany", "civil engineering",
           "geography", "astronomy", "architecture", "mathematics", "sculpture",
           "natural history", "chemistry")
_INDUSTRY = ("textile", "glassmaking", "shipbuilding", "timber", "paper", "brewing",
             "clockmaking", "salt mining", "porcelain", "printing")
_POPULATION = {"village": (20, 500), "town": (300, 9000), "city": (5000, 250000)}  # x 10
_MONTHS = ("January February March April May June July August September October "
           "November December").split()
_ROLES = {
    "composer": ("composed the opera {title}", "wrote the symphony {title}",
                 "completed the song cycle {title}"),
    "painter": ("painted {title}", "exhibited the series {title}"),
    "novelist": ("published the novel {title}", "wrote the story collection {title}"),
    "botanist": ("described the plant genus {genus}", "published the survey {title}"),
    "engineer": ("designed the {place} Bridge", "built the railway line to {place}"),
    "explorer": ("led an expedition to the {place} Islands", "mapped the coast of {place}"),
    "astronomer": ("discovered the comet {genus}", "published the star atlas {title}"),
    "architect": ("designed the {place} Town Hall", "completed the {place} Library"),
    "poet": ("published the collection {title}", "wrote the long poem {title}"),
    "mathematician": ("published the treatise {title}", "proved the {genus} conjecture"),
}


class _Namer:
    """Invented names, unique across the workload (a repeat is redrawn)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def _fresh(self, make: Callable[[], str]) -> str:
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name

    def word(self, n: int = 2) -> str:
        return "".join(self.rng.choice(_SYL) for _ in range(n)).capitalize()

    def person(self) -> str:
        return self._fresh(lambda: f"{self.word(2)} {self.word(self.rng.choice((2, 3)))}")

    def place(self) -> str:
        return self._fresh(lambda: self.word(self.rng.choice((1, 2))) + self.rng.choice(_PLACE_END))

    def proper(self) -> str:
        return self._fresh(lambda: self.word(self.rng.choice((2, 3))))

    def title(self) -> str:
        r = self.rng
        return self._fresh(lambda: f"The {r.choice(_ADJ)} {r.choice(_NOUN)}"
                           if r.random() < .7 else f"{r.choice(_NOUN)} of {self.place()}")


_QUESTIONS = {
    "person": ("Who was {s}?", "Tell me about the {noun} {s}.", "What do you know about {s}?",
               "Give me a short biography of {s}."),
    "town": ("Tell me about {s}.", "What is {s} known for?",
             "Describe the {noun} of {s}.", "What do you know about {s}?"),
    "river": ("Tell me about {s}.", "What do you know about {s}?",
              "Describe the course of {s}."),
    "company": ("Tell me about {s}.", "What kind of company is {s}?",
                "What do you know about {s}?"),
    "mountain": ("Tell me about {s}.", "What do you know about {s}?",
                 "Describe {s} for a hiker."),
}

# Remarks carry no checkable fact: the claim stage extracts nothing from them.
_OPENERS = ("Here is a short overview of {s}.", "Here is what I know about {s}.",
            "Sure, here are the main facts about {s}.")
_REMARKS = ("{S} is certainly worth learning more about.",
            "Opinions about the importance of {s} vary a great deal.",
            "Many people find the story of {s} quite fascinating.",
            "There is a lot more that could be said about {s}.",
            "The history of {s} is richer than it may first appear.",
            "Some details about {s} are still debated by enthusiasts.",
            "It is easy to see why {s} attracts so much interest.")
_CLOSERS = ("I hope this overview of {s} is helpful.",
            "Let me know if you would like to hear more about {s}.",
            "In short, {s} has an interesting story.")
_PASSAGE_REMARKS = ("Little else is recorded about this period.",
                    "Local archives hold further documents on the subject.",
                    "Accounts from the time differ in their details.")
_SUPPORT = ("According to the evidence, {s} {pred}, which agrees with the claim.",
            "The retrieved passages state that {s} {pred}, so the claim is supported.",
            "The evidence confirms that {s} {pred}.")
_REFUTE = ("The evidence states that {s} {true}, not that {s} {false}.",
           "According to the passages, {s} {true}; the claim is wrong on this point.",
           "The retrieved evidence says {s} {true}, which contradicts the claim.")
