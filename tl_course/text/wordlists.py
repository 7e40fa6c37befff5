"""The word lists of the bias tests, in one place, with their sources.

All from the supplementary material of Caliskan, Bryson & Narayanan (2017), "Semantics
derived automatically from language corpora contain human-like biases", Science 356(6334),
183-186 (doi:10.1126/science.aal4230), who took them from the implicit association test
studies they replicate:

- WEAT 6 (male / female names, career / family words): Nosek, Banaji & Greenwald (2002),
  "Harvesting implicit group attitudes and beliefs from a demonstration web site".
- WEAT 3 (European-American / African-American names, pleasant / unpleasant words):
  Greenwald, McGhee & Schwartz (1998), "Measuring individual differences in implicit
  cognition: the implicit association test". Caliskan et al. left 18 names of each list
  out of their GloVe replication (the African-American ones too rare in their corpus, as
  many European-American ones chosen at random); the lists below are the 32 + 32 they
  kept, and the left-out names are kept here too, for reference.

GloVe's vocabulary is lower-case, so are the lists.
"""

from __future__ import annotations

MALE_NAMES = ["john", "paul", "mike", "kevin", "steve", "greg", "jeff", "bill"]
FEMALE_NAMES = ["amy", "joan", "lisa", "sarah", "diana", "kate", "ann", "donna"]
CAREER = ["executive", "management", "professional", "corporation", "salary", "office",
          "business", "career"]
FAMILY = ["home", "parents", "children", "family", "cousins", "marriage", "wedding",
          "relatives"]

EUROPEAN_AMERICAN_NAMES = [
    "adam", "harry", "josh", "roger", "alan", "frank", "justin", "ryan", "andrew", "jack",
    "matthew", "stephen", "brad", "greg", "paul", "jonathan", "peter", "amanda", "courtney",
    "heather", "melanie", "katie", "betsy", "kristin", "nancy", "stephanie", "ellen", "lauren",
    "colleen", "emily", "megan", "rachel",
]
AFRICAN_AMERICAN_NAMES = [
    "alonzo", "jamel", "theo", "alphonse", "jerome", "leroy", "torrance", "darnell", "lamar",
    "lionel", "tyree", "deion", "lamont", "malik", "terrence", "tyrone", "lavon", "marcellus",
    "wardell", "nichelle", "shereen", "ebony", "latisha", "shaniqua", "jasmine", "tanisha",
    "tia", "lakisha", "latoya", "yolanda", "malika", "yvette",
]
# Gender of the 64 names above: Greenwald et al. list the male names of each list first.
# Used to check whether the male / female WEAT is frequency: in WEAT 6's lists every male
# name is more frequent in GloVe's corpus than every female name, in these 64 they overlap.
EUROPEAN_AMERICAN_MALE = EUROPEAN_AMERICAN_NAMES[:17]  # adam ... peter
AFRICAN_AMERICAN_MALE = AFRICAN_AMERICAN_NAMES[:19]  # alonzo ... wardell
# Left out of Caliskan et al.'s replication (see above); not used in the tests here.
EUROPEAN_AMERICAN_LEFT_OUT = [
    "chip", "ian", "fred", "jed", "todd", "brandon", "hank", "wilbur", "sara", "amber",
    "crystal", "meredith", "shannon", "donna", "bobbie-sue", "peggy", "sue-ellen", "wendy",
]
AFRICAN_AMERICAN_LEFT_OUT = [
    "lerone", "percell", "rasaan", "rashaun", "everol", "terryl", "aiesha", "lashelle",
    "temeka", "tameisha", "teretha", "latonya", "shanise", "sharise", "tashika", "lashandra",
    "shavonn", "tawanda",
]
# WEAT 3's attribute words (its unpleasant list differs from WEAT 1's by bomb and evil).
PLEASANT = [
    "caress", "freedom", "health", "love", "peace", "cheer", "friend", "heaven", "loyal",
    "pleasure", "diamond", "gentle", "honest", "lucky", "rainbow", "diploma", "gift", "honor",
    "miracle", "sunrise", "family", "happy", "laughter", "paradise", "vacation",
]
UNPLEASANT = [
    "abuse", "crash", "filth", "murder", "sickness", "accident", "death", "grief", "poison",
    "stink", "assault", "disaster", "hatred", "pollute", "tragedy", "bomb", "divorce", "jail",
    "poverty", "ugly", "cancer", "evil", "kill", "rotten", "vomit",
]
