"""
The reasoning vocabulary of the corpus in two languages, for R1-Zero's language mixing (DeepSeek-R1 sec. 2.3).

data.py writes the reasoning of a corpus document with one language's phrases; rewards.py measures which
language a chain of thought is in by its words. Both read this table, which imports nothing, so neither has
to import the other's higher-level code.

"de" is German in ASCII spelling (umlauts written out: "pruefen"), so that the fixed byte-level tokenizer
encodes it without new tokens. Its words share none with the English phrases: every word tells its language.
"""

import re

# phrase name -> text; data.countdown_response fills its styles from one of these tables, and readable.py (R1's
# cold start from R1-Zero's outputs) translates with them and ends its answers with the "summary" phrase
PHRASES = {
    "en": {"guess": "Guess", "try": "Try", "verify": "Let me verify", "wait": "Wait", "is_not": "is not",
           "summary": "Summary"},
    "de": {"guess": "Ich rate", "try": "Versuche", "verify": "Lass mich pruefen", "wait": "Warte",
           "is_not": "ist nicht", "summary": "Zusammenfassung"},
}
LANGUAGES = tuple(PHRASES)
SECOND_LANGUAGE = "de"

# a word is a run of letters (any script, so "Wärte" or "思考" are words too); digits and symbols are not words
WORD_RE = re.compile(r"[^\W\d_]+")
# each language's words, lower case
LEXICONS = {lang: frozenset(w.lower() for text in phrases.values() for w in WORD_RE.findall(text))
            for lang, phrases in PHRASES.items()}
