"""Prompt templates of the four LM stages, sized like FacTool's knowledge-QA prompts.

Each template is a long fixed part (instructions and worked examples: the prefix every
call of that stage shares, which a prefix cache can keep) followed by the variable
input, filled with ``str.format`` from the stage's input item:

=========  ==============================  ========================================
prompt     fields                          fixed part
=========  ==============================  ========================================
answer     ``{question}``                  a short system prompt
claims     ``{question}``, ``{sentence}``  ~2,300 characters, 6 worked examples
claims_answer ``{answer}``                 ~2,300 characters, 4 worked examples (baseline)
queries    ``{claim}``                     ~1,200 characters, 3 worked examples
verify     ``{claim}``, ``{evidence}``     ~1,350 characters, the output schema
=========  ==============================  ========================================

The claim stage sees one sentence at a time (sentences stream in), so it also gets the
question, which names the subject its pronouns refer to. ``CLAIMS_ANSWER`` is FacTool's
own form, claims over the whole answer at once: the baseline that waits for whole
outputs (``topology/factool_baseline.toml``) uses it. ``SCRIPT_KEY_FIELD`` names the
input field whose value is the sim engine's script key.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

ANSWER = """\
System: You are a knowledgeable and friendly assistant. Answer the user's question in \
one paragraph of complete, plain sentences. State concrete facts such as names, places, \
dates and figures where you know them. Do not use lists, headings or abbreviations.

User: {question}
Assistant:"""

CLAIMS = """\
System: You break text into atomic factual claims so that each one can be checked \
against a reference source on its own.

Instructions:
- You see one sentence of an answer, after "Sentence:", and the question that the \
answer replies to, after "Question:". List every checkable statement of fact the \
sentence makes: who did what, where, when, how many, what something is.
- Write each claim as a short, complete sentence that makes sense on its own. Replace \
pronouns and phrases such as "the town" or "she" by the full name they stand for, \
which the question gives you.
- Keep each claim to a single fact: a sentence joining two facts with "and" gives two.
- Do not add anything the sentence does not say, and do not judge whether it is true.
- Leave out opinions, greetings, hedges and remarks that state no checkable fact.
- Write one claim per line, numbered "1.", "2.", and so on. If the sentence states no \
fact at all, write nothing.

Example 1
Question: Who was Marie Curie?
Sentence: Marie Curie was born in Warsaw in 1867.
Claims:
1. Marie Curie was born in Warsaw.
2. Marie Curie was born in 1867.

Example 2
Question: Tell me about the Danube.
Sentence: It flows through ten countries and empties into the Black Sea.
Claims:
1. The Danube flows through ten countries.
2. The Danube empties into the Black Sea.

Example 3
Question: What is Lisbon known for?
Sentence: I hope this short summary is useful to you.
Claims:

Example 4
Question: When was the Eiffel Tower built?
Sentence: The tower was completed in 1889 and stands about 330 metres tall.
Claims:
1. The Eiffel Tower was completed in 1889.
2. The Eiffel Tower stands about 330 metres tall.

Example 5
Question: Give me a short biography of Marie Curie.
Sentence: She received the Nobel Prize in Chemistry in 1911, her second Nobel Prize.
Claims:
1. Marie Curie received the Nobel Prize in Chemistry in 1911.
2. The Nobel Prize in Chemistry of 1911 was the second Nobel Prize of Marie Curie.

Example 6
Question: Tell me about Kyoto.
Sentence: Many people find Kyoto lovely, and it was the capital of Japan for more \
than a thousand years.
Claims:
1. Kyoto was the capital of Japan for more than a thousand years.

Now list the claims of this sentence.
Question: {question}
Sentence: {sentence}
Claims:
"""

CLAIMS_ANSWER = """\
System: You break a chatbot's answer into atomic factual claims so that each one can be \
checked against a reference source on its own.
Instructions:
- You see a whole answer after "Answer:". List every checkable statement of fact it \
makes, in the order the answer makes them: who did what, where, when, how many, what \
something is.
- Write each claim as a short, complete sentence that makes sense on its own. Replace \
pronouns and phrases such as "the town" or "she" by the full name they stand for.
- Keep each claim to a single fact: a sentence joining two facts with "and" gives two.
- Do not add anything the answer does not say, and do not judge whether it is true.
- Leave out opinions, greetings, hedges and remarks that state no checkable fact.
- Write one claim per line, numbered "1.", "2.", and so on. If the answer states no \
fact at all, write nothing.

Example 1
Answer: Marie Curie was born in Warsaw in 1867. She received the Nobel Prize in \
Chemistry in 1911, her second Nobel Prize. I hope this helps.
Claims:
1. Marie Curie was born in Warsaw.
2. Marie Curie was born in 1867.
3. Marie Curie received the Nobel Prize in Chemistry in 1911.
4. The Nobel Prize in Chemistry of 1911 was the second Nobel Prize of Marie Curie.

Example 2
Answer: The Danube is a long river of Europe. It flows through ten countries and \
empties into the Black Sea.
Claims:
1. The Danube is a river of Europe.
2. The Danube flows through ten countries.
3. The Danube empties into the Black Sea.

Example 3
Answer: Lisbon is a lovely place to visit. I hope this short summary is useful to you.
Claims:

Example 4
Answer: The Eiffel Tower is a wrought-iron tower in Paris. The tower was completed in \
1889 and stands about 330 metres tall. Many people find it lovely, and it is the most \
visited monument of the city.
Claims:
1. The Eiffel Tower is a wrought-iron tower.
2. The Eiffel Tower is in Paris.
3. The Eiffel Tower was completed in 1889.
4. The Eiffel Tower stands about 330 metres tall.
5. The Eiffel Tower is the most visited monument of Paris.

Now list the claims of this answer.
Answer: {answer}
Claims:
"""

QUERIES = """\
System: You write web search queries that would find evidence for or against a claim.

Instructions:
- For the claim after "Claim:", write one to three search queries, one per line, each \
starting with "- ".
- Make the queries differ: for example one natural question and one short keyword query \
built from the names, dates and figures in the claim.
- Keep the full names from the claim in every query so that the search finds the right \
subject.
- When the claim gives a date or a figure, put it in at least one query, so that the \
results can confirm it or contradict it.
- Prefer the plain words an encyclopedia would use over vague ones such as "famous".
- Write only the queries, without explanations.

Example 1
Claim: The Great Wall of China is more than 20,000 kilometres long.
Queries:
- How long is the Great Wall of China?
- Great Wall of China total length kilometres

Example 2
Claim: Ada Lovelace published the first algorithm for a computing machine in 1843.
Queries:
- Ada Lovelace first algorithm 1843
- What did Ada Lovelace publish in 1843?

Example 3
Claim: Lake Baikal is the deepest lake in the world.
Queries:
- Which lake is the deepest in the world?
- Lake Baikal depth

Claim: {claim}
Queries:
"""

VERIFY = """\
System: You are a careful fact checker. You judge a single claim against evidence \
passages from a search engine.

Instructions:
- Read the claim and the numbered evidence passages below it.
- Decide whether the evidence supports the claim. A claim is factual when the evidence \
states the same fact, with the same names, dates and figures. A claim is not factual \
when the evidence gives a different name, date or figure for the same fact.
- If the evidence says nothing about the claim, rely on what you know, and say in your \
reasoning that the evidence was silent.
- Do not let the wording of the claim persuade you: only the evidence and well \
established knowledge count.
- Keep the reasoning short: one or two sentences that name the passage you relied on.

Answer with one JSON object and nothing else, with exactly these keys:
{{
  "reasoning": "<why the claim is or is not supported, in one or two sentences>",
  "factuality": <true if the claim is factual, false otherwise>
}}
Use the JSON literals true and false for "factuality", not strings. Do not wrap the \
object in code fences and do not add text before or after it.

For example, for the claim "The Nile flows into the Red Sea." and evidence saying that \
the Nile empties into the Mediterranean Sea, answer:
{{"reasoning": "Passage 1 says the Nile flows into the Mediterranean Sea, not the Red \
Sea.", "factuality": false}}

Claim: {claim}

Evidence:
{evidence}

Verdict:
"""

PROMPTS: dict[str, str] = {"answer": ANSWER, "claims": CLAIMS, "claims_answer": CLAIMS_ANSWER,
                           "queries": QUERIES, "verify": VERIFY}

# Which input field holds the sim engine's script key for each prompt.
SCRIPT_KEY_FIELD: dict[str, str] = {"answer": "question", "claims": "sentence",
                                    "claims_answer": "answer", "queries": "claim",
                                    "verify": "claim"}


def fields(name: str) -> tuple[str, ...]:
    """The named fields prompt ``name`` fills from its input item."""
    return tuple(f for _, f, _, _ in string.Formatter().parse(PROMPTS[name]) if f)


def render(name: str, item: Mapping[str, Any]) -> str:
    """The full prompt ``name`` for input ``item`` (a mapping holding its fields)."""
    try:
        template = PROMPTS[name]
    except KeyError:
        raise KeyError(f"unknown prompt {name!r}; known: {sorted(PROMPTS)}") from None
    missing = [f for f in fields(name) if f not in item]
    if missing:
        raise KeyError(f"prompt {name!r} needs field(s) {missing}; item has {sorted(item)}")
    return template.format_map({f: item[f] for f in fields(name)})


def fixed_part(name: str) -> str:
    """The shared prefix of prompt ``name``: everything before its first field."""
    template = PROMPTS[name]
    return template[: template.index("{" + fields(name)[0] + "}")].replace(
        "{{", "{").replace("}}", "}")
