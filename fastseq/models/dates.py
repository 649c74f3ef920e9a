"""The built-in translation task: dates written in words -> ISO form, generated from a
seed (e.g. "saturday the twenty third of march nineteen ninety nine" -> "1999-03-23")."""
import datetime
import random

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
        8: "eighty", 9: "ninety"}
ORDINALS = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
            "sixteenth", "seventeenth", "eighteenth", "nineteenth"]

FIRST_YEAR, LAST_YEAR = 1900, 2099


def number_words(n: int) -> str:
    """0..99 in words: 'seven', 'forty two'."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("" if ones == 0 else " " + ONES[ones])


def ordinal_words(n: int) -> str:
    """1..31: 'first', 'twentieth', 'thirty first'."""
    if n < 20:
        return ORDINALS[n]
    tens, ones = divmod(n, 10)
    return (TENS[tens][:-1] + "ieth") if ones == 0 else TENS[tens] + " " + ORDINALS[ones]


def year_words(year: int, rng: random.Random) -> str:
    """1999 -> 'nineteen ninety nine', 1905 -> 'nineteen oh five', 2007 -> 'two thousand
    and seven', 2015 -> 'twenty fifteen' or 'two thousand and fifteen'."""
    century, rest = divmod(year, 100)
    if century == 20 and (rest < 10 or rng.random() < 0.5):
        return "two thousand" + ("" if rest == 0 else " and " + number_words(rest))
    if rest == 0:
        return number_words(century) + " hundred"
    if rest < 10:
        return number_words(century) + " oh " + ONES[rest]
    return number_words(century) + " " + number_words(rest)


def date_in_words(date: datetime.date, rng: random.Random) -> str:
    day, month, year = ordinal_words(date.day), MONTHS[date.month - 1], year_words(date.year, rng)
    weekday = WEEKDAYS[date.weekday()]
    forms = [f"{day} of {month} {year}",
             f"the {day} of {month} {year}",
             f"{month} {day} {year}",
             f"{month} the {day} {year}",
             f"{weekday} the {day} of {month} {year}",
             f"{weekday} {month} {day} {year}"]
    return rng.choice(forms)


def random_date(rng: random.Random) -> datetime.date:
    first = datetime.date(FIRST_YEAR, 1, 1).toordinal()
    last = datetime.date(LAST_YEAR, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(first, last))


def date_pairs(count: int, seed: int):
    """count (words, iso) pairs drawn with random.Random(seed)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        date = random_date(rng)
        pairs.append((date_in_words(date, rng), date.isoformat()))
    return pairs

