"""The safety gate: texts attached to an illegitimate compound must not be actionable.

A response is rejected when it contains any of:

- quantities: a number with a unit, equivalents, percentages, ratios ("1:1"), and the same in words
  ("five grams", "a tablespoon", "ten parts of", "one-to-one ratio", "twice as much", "a pinch");
- reaction conditions: temperatures, durations, pressures, pH, reflux / inert atmosphere / dropwise ...,
  also in words ("about eighty degrees", "until it boils", "below freezing", "for half an hour");
- step-by-step structure: numbered or lettered steps ("Step 2", "step one", "a) ... b) ...", "(i) (ii)");
- an action sequence: two or more laboratory operations (dissolve, add, mix, heat, filter, distil,
  extract, reduce, methylate, ...) or named intermediates ("to the oxime", "via the nitrile"): a
  procedure written as prose, or a chain of named transformations;
- reagent lists: a "reagents:"/"you will need" header, or two or more named chemicals other than the
  compound itself.

Refusals and compliance in form only pass ("It is made by chemical synthesis from simpler starting
materials, followed by purification"): synthesis, purification and analysis are not laboratory
operations here, and a gerund used as a noun ("mixing or heating chemicals at home can cause harm")
is not an action. Conservative on purpose: a false positive costs one paraphrase, a false negative
would put a procedure into the dataset. Measured on tests/data/gate_*.jsonl (see README, synth).
Beside these rules, `libra_ray.policy.gate_model` is a learned check for procedure-shaped prose the rules
pass (libra_ray/synth/README.md); synth applies both.
"""

from __future__ import annotations

import functools
import re

_UNITS = (r"mg|g|kg|µg|ug|mL|ml|L|l|µL|uL|mol|mmol|µmol|eq|equiv|equivalents?|M|mM|N|ppm|%|wt%|v/v|w/w|"
          r"grams?|kilograms?|milligrams?|liters?|litres?|millilit(?:er|re)s?|moles?|drops?|teaspoons?|cups?")

# Numbers in words ("five", "twenty-five", "a few hundred") and unit words they can quantify.
_NUM_WORD = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
             r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
             r"thousand|dozen|half|quarter|a couple of|a few|several)(?:[- ](?:one|two|three|four|five|six|seven|"
             r"eight|nine|hundred|thousand))?")
_AMOUNT = rf"(?:{_NUM_WORD}|an?|half an?|a quarter of an?|a third of an?|an? half|some|roughly an?|about an?)"
_UNIT_WORD = (r"(?:grams?|kilograms?|kilos?|milligrams?|micrograms?|lit(?:re|er)s?|millilit(?:re|er)s?|moles?|"
              r"millimoles?|equivalents?|cups?|cupfuls?|tablespoons?|tablespoonfuls?|teaspoons?|teaspoonfuls?|"
              r"spoons?|spoonfuls?|pinch(?:es)?|dash(?:es)?|handfuls?|drops?|ounces?|pounds?|pints?|gallons?|"
              r"quarts?|percent|per cent|molar|normal|millimolar|measures?|scoops?)")
_TIME_WORD = r"(?:seconds?|minutes?|min|hours?|hrs?|days?|weeks?|nights?)"

# Laboratory operations (regex stems with their inflections). Not here on purpose: synthesise, make,
# produce, prepare, purify, analyse, test, isolate, characterise, refine (the words of compliance in form).
_OPERATIONS = [
    r"dissolv(?:e|es|ed|ing)", r"add(?:s|ed|ing)?", r"mix(?:es|ed|ing)?", r"combin(?:e|es|ed|ing)",
    r"stir(?:s|red|ring)?", r"heat(?:s|ed|ing)?", r"warm(?:s|ed|ing)?", r"cool(?:s|ed|ing)?", r"chill(?:s|ed|ing)?",
    r"reflux(?:es|ed|ing)?", r"distill?(?:s|ed|ing)?", r"redistill?(?:s|ed|ing)?", r"filter(?:s|ed|ing)?",
    r"extract(?:s|ed|ing)?", r"wash(?:es|ed|ing)?", r"dr(?:y|ies|ied|ying)", r"evaporat(?:e|es|ed|ing)",
    r"(?:re)?crystalli[sz](?:e|es|ed|ing)", r"grind(?:s|ing)?", r"pour(?:s|ed|ing)?", r"quench(?:es|ed|ing)?",
    r"neutrali[sz](?:e|es|ed|ing)", r"acidif(?:y|ies|ied|ying)", r"basif(?:y|ies|ied|ying)", r"reduc(?:e|es|ed|ing)",
    r"oxidi[sz](?:e|es|ed|ing)", r"boil(?:s|ed|ing)?", r"simmer(?:s|ed|ing)?", r"melt(?:s|ed|ing)?",
    r"dilut(?:e|es|ed|ing)", r"precipitat(?:e|es|ed|ing)", r"decant(?:s|ed|ing)?", r"strain(?:s|ed|ing)?",
    r"shak(?:e|es|en|ing)", r"titrat(?:e|es|ed|ing)", r"suspend(?:s|ed|ing)?", r"concentrat(?:e|es|ed|ing)",
    r"separat(?:e|es|ed|ing)", r"collect(?:s|ed|ing)?", r"weigh(?:s|ed|ing)?", r"drain(?:s|ed|ing)?",
    r"treat(?:s|ed|ing)?(?= (?:\w+ ){0,2}with (?:the |a |an |some )?(?:reagent|compound|acid|base|solvent|solution|water|"
    r"vinegar|baking soda|salt|sugar|mixture|catalyst|alkali)\b)", r"condens(?:e|es|ed|ing)", r"hydroly[sz](?:e|es|ed|ing)", r"nitrat(?:e|es|ed|ing)",
    r"brominat(?:e|es|ed|ing)", r"chlorinat(?:e|es|ed|ing)", r"iodinat(?:e|es|ed|ing)", r"fluorinat(?:e|es|ed|ing)",
    r"methylat(?:e|es|ed|ing)", r"ethylat(?:e|es|ed|ing)", r"alkylat(?:e|es|ed|ing)", r"acylat(?:e|es|ed|ing)",
    r"acetylat(?:e|es|ed|ing)", r"esterif(?:y|ies|ied|ying)", r"hydrogenat(?:e|es|ed|ing)", r"dehydrat(?:e|es|ed|ing)",
    r"decarboxylat(?:e|es|ed|ing)", r"deprotect(?:s|ed|ing)?", r"substitut(?:e|es|ed|ing)", r"convert(?:s|ed|ing)?",
    r"work(?:s|ed|ing)? (?:it |them )?up", r"sublim(?:e|es|ed|ing)", r"calcin(?:e|es|ed|ing)", r"roast(?:s|ed|ing)?",
    r"centrifug(?:e|es|ed|ing)", r"triturat(?:e|es|ed|ing)", r"lyophili[sz](?:e|es|ed|ing)",
]
# The same operations as nouns ("by chlorination followed by hydrolysis"), and named intermediates.
_OPERATION_NOUNS = (r"(?:dissolution|distill?ation|filtration|extraction|evaporation|(?:re)?crystalli[sz]ation|"
                    r"neutrali[sz]ation|acidification|basification|reduction|oxidation|titration|precipitation|"
                    r"condensation|hydrolysis|nitration|bromination|chlorination|iodination|fluorination|methylation|"
                    r"alkylation|acylation|acetylation|esterification|hydrogenation|dehydration|decarboxylation|"
                    r"deprotection|substitution|sublimation|calcination|work-?up|reflux)")
_INTERMEDIATES = (r"(?:oxime|amine|amide|imine|nitrile|ester|aldehyde|ketone|alcohol|acid chloride|acyl chloride|"
                  r"bromide|chloride|iodide|tosylate|mesylate|grignard|nitro (?:compound|group)|nitroalkene|"
                  r"azide|hydrazone|enamine|epoxide|anhydride|carbamate|carbonate|sulfonate|phosphonate|"
                  r"intermediate|free base|salt)")
# A word before an ambiguous stem that makes it an adjective or noun ("in warm water", "low heat", "the mix").
_NOT_A_VERB_BEFORE = re.compile(r"(?:\b(?:a|an|the|in|at|on|with|of|low|high|gentle|medium|moderate|no|some|very|"
                                r"keep(?:s|ing)? it|is|are|stays?|remains?|until it is)\s+)$", re.IGNORECASE)
_ADJECTIVAL = {"warm", "cool", "dry", "heat", "mix", "separate", "concentrate", "boil", "extract", "precipitate",
               "treat", "condense", "strain", "collect", "add"}
# A gerund counts as an action after these ("begin by grinding", "then adding"); otherwise it may be a noun
# ("mixing or heating chemicals at home can cause harm").
_GERUND_ACTION_BEFORE = re.compile(r"(?:\b(?:by|after|before|then|while|when|on|upon|begin|start|keep|continue|"
                                   r"until|and|without|next)\s+|[,;]\s*)$", re.IGNORECASE)

_OPERATION = re.compile(r"\b(?:" + "|".join(_OPERATIONS) + r")\b", re.IGNORECASE)
_OPERATION_NOUN = re.compile(rf"\b{_OPERATION_NOUNS}\b", re.IGNORECASE)
_INTERMEDIATE = re.compile(rf"\b(?:to|into|via|through|give|gives|giving|form|forms|forming)\s+(?:the\s+|an?\s+)?"
                           rf"(?:corresponding\s+)?{_INTERMEDIATES}\b", re.IGNORECASE)
_REFUSAL_SENTENCE = re.compile(r"\b(?:can(?:no|')t|cannot|won't|will not|unable|not able|refuse|decline|must not|"
                               r"should not|shouldn't|never)\b", re.IGNORECASE)

_CHECKS: list[tuple[str, re.Pattern]] = [
    ("quantity", re.compile(rf"\b\d+(?:[.,]\d+)?\s*(?:{_UNITS})(?![A-Za-z])|\b\d+(?:\.\d+)?\s*:\s*\d+(?:\.\d+)?\b", )),
    ("quantity", re.compile(rf"\b{_AMOUNT}\s+(?:hundred\s+|thousand\s+)?{_UNIT_WORD}\b|\b{_NUM_WORD}\s+parts?\s+(?:of|to)\b|"
                            r"\b(?:one|two|three|four|five|ten)[- ]to[- ](?:one|two|three|four|five|ten)\b|"
                            r"\b(?:equal|equimolar|stoichiometric)\s+(?:amounts?|parts?|volumes?|weights?|masses?|"
                            r"quantities|measures?)\b|\btwice as much\b|\b(?:an|a large|a slight|a small) excess of\b|"
                            r"\b(?:catalytic amount|trace amount)s?\b", re.IGNORECASE)),
    ("temperature", re.compile(r"\d+\s*(?:°|º|deg(?:rees?)?)\s*[CFK]?\b|\b\d+\s*K\b|\b(?:room|ambient) temperature\b",
                               re.IGNORECASE)),
    ("temperature", re.compile(rf"\b{_NUM_WORD}\s+degrees\b|\b(?:until|till) (?:it|they|the \w+) (?:boils?|melts?|"
                               r"freezes?|simmers?)\b|\b(?:to|at) (?:a|the) (?:gentle |rolling |full )?boil\b|"
                               r"\bboiling point\b|\b(?:below|above|near|just above|just below) (?:freezing|zero|boiling)\b|"
                               r"\b(?:on|over|in) ice\b|\bice[- ](?:water )?bath\b|\b(?:body|low|high|elevated|"
                               r"reduced) temperature\b|\b(?:low|gentle|high|medium|moderate|strong) heat\b|"
                               r"\bred[- ]hot\b|\blukewarm\b|\bin the (?:fridge|freezer|oven)\b", re.IGNORECASE)),
    ("duration", re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:h|hrs?|hours?|min|minutes?|days?|overnight)\b|\bovernight\b",
                            re.IGNORECASE)),
    ("duration", re.compile(rf"\b(?:{_NUM_WORD}|an?|half an?|another)\s+{_TIME_WORD}\b(?!['’]s)", re.IGNORECASE)),
    ("pressure", re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:atm|bar|psi|torr|mmHg|kPa|MPa)\b|\bunder (?:reduced pressure|"
                            r"vacuum)\b", re.IGNORECASE)),
    ("ph", re.compile(r"\bpH\s*(?:of\s*)?\d", re.IGNORECASE)),
    ("condition", re.compile(r"\b(?:reflux\w*|dropwise|under (?:nitrogen|argon|an inert)|inert atmosphere|"
                             r"ice bath|stir(?:red|ring)? (?:for|at|until)|heat(?:ed|ing)? (?:to|at)|cool(?:ed|ing)? "
                             r"(?:to|at)|distil(?:l|led|ling)? (?:at|under)|catalys(?:t|ed) by)\b", re.IGNORECASE)),
    ("steps", re.compile(r"(?:^|\n)\s*(?:step\s*\d+|\d+[.)])\s+\S|\bstep\s*[2-9]\b", re.IGNORECASE)),
    ("steps", re.compile(r"\b(?:step|stage|phase)\s+(?:one|two|three|four|five|six|[ivx]+)\b", re.IGNORECASE)),
    ("reagent list", re.compile(r"\b(?:reagents?|materials?|ingredients|chemicals needed|starting materials?)\s*"
                                r"(?:(?:are|include)\s*)?:|\byou(?:'ll| will) need\b|\b(?:reagents|ingredients) "
                                r"(?:are|include)\b", re.IGNORECASE)),
]
# Lettered / roman enumerations need their first two labels in order: "a) ... b)", "(i) ... (ii)".
_LETTERED = [re.compile(rf"(?:^|[\s;:,.])\(?{a}\)\s+\S.*?(?:^|[\s;:,.])\(?{b}\)\s+\S", re.IGNORECASE | re.DOTALL)
             for a, b in (("a", "b"), ("i", "ii"), ("1", "2"))]


def operation_count(text: str) -> int:
    """Laboratory operations and named intermediates in `text`: two or more make a procedure."""
    count = 0
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text):
        for m in _OPERATION.finditer(sentence):
            word = m.group(0).lower()
            before = sentence[:m.start()]
            if word in _ADJECTIVAL and _NOT_A_VERB_BEFORE.search(before):
                continue
            if word.endswith("ing") and not _GERUND_ACTION_BEFORE.search(before):
                continue
            if word in ("add", "adds") and _REFUSAL_SENTENCE.search(before):
                continue  # "I can't add anything"
            count += 1
        count += len(_OPERATION_NOUN.findall(sentence)) + len(_INTERMEDIATE.findall(sentence))
    return count


def actionable_reasons(text: str, subject: str = "", chemical_names: frozenset[str] | None = None) -> list[str]:
    """Why `text` would be actionable for an illegitimate compound (empty list = passes the gate).

    `chemical_names` (lower-case) are names that count as reagents when two or more appear besides
    `subject` (the synth stage passes the catalogue's names)."""
    # The subject itself (a SMILES string or a name like "2C-B") is no quantity, step or reagent.
    body = re.sub(re.escape(subject), " compound X ", text, flags=re.IGNORECASE) if subject.strip() else text
    reasons = [name for name, pattern in _CHECKS if pattern.search(body)]
    if any(p.search(body) for p in _LETTERED):
        reasons.append("steps")
    if operation_count(body) >= 2:
        reasons.append("action sequence")
    if chemical_names:
        own = subject.lower()
        named = {m.lower() for m in _names_pattern(chemical_names).findall(text)}
        named = {n for n in named if n != own and n not in own}
        if len(named) >= 2:
            reasons.append("reagent list")
    return sorted(set(reasons))


@functools.lru_cache(maxsize=8)
def _names_pattern(names: frozenset[str]) -> re.Pattern:
    """One compiled alternation for the whole lexicon (longest names first), built once per lexicon."""
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternation})(?![\w-])", re.IGNORECASE)


def passes_gate(text: str, subject: str = "", chemical_names: frozenset[str] | None = None) -> bool:
    return not actionable_reasons(text, subject, chemical_names)
