"""Write sample_data/reviews.csv and its Parquet twin, deterministically.

    python sample_data/make_samples.py

300 product reviews built from phrase templates with a fixed seed, so the files
are the same on every machine. The set is shaped like real labeling input: ids
that are not positions, mixed lengths, commas, quotes, newlines and non-ASCII
text, images on about 15% of rows (a JSON array in CSV, list<string> in
Parquet), and a few exact duplicate texts for request de-duplication to find.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20261125
ROWS = 300
IMAGE_SHARE = 0.15
HERE = Path(__file__).resolve().parent

# product -> aspects a reviewer of that product talks about
PRODUCTS = {
    "Aurora Wireless Earbuds": ["sound quality", "battery life", "the charging case", "the fit"],
    "TrailMax Hiking Boots": ["the grip", "the ankle support", "the sizing", "waterproofing"],
    "BrewMaster 12-Cup Coffee Maker": ["the carafe", "brew time", "the taste", "the timer"],
    "Nimbus Memory Foam Pillow": ["the firmness", "the cover", "the smell"],
    'PixelPro 27" Monitor': ["colour accuracy", "the stand", "the panel", "the menus"],
    "Verde Bamboo Cutting Board": ["the finish", "the size", "durability"],
    "Sprout Kids' Water Bottle": ["the lid", "the seal", "cleaning"],
    "Atlas Carry-On Suitcase": ["the wheels", "the zippers", "the handle", "the weight"],
    "Lumen Smart Bulb (4-pack)": ["the app", "pairing", "brightness", "colour range"],
    "Forge Cast-Iron Skillet": ["the seasoning", "heat retention", "the weight"],
    "Zephyr Desk Fan": ["noise", "airflow", "the oscillation"],
    "Quill Gel Pens, 12 colours": ["ink flow", "the colours", "drying time"],
    "Crème de la Crème Face Serum": ["the texture", "the scent", "the results"],
    "Orbit Robot Vacuum": ["suction", "the mapping", "the app", "navigating around furniture"],
    "Summit Yoga Mat": ["the grip", "thickness", "the smell"],
}

OPENERS = {
    "positive": [
        "Absolutely love the {product}.",
        "Five stars, no hesitation.",
        "Bought this for my partner and now I want one too.",
        "Honestly better than I expected for the price.",
        "This is my second {product} and it's still great.",
        "Wow.",
        "Really pleased with this purchase.",
    ],
    "neutral": [
        "It's fine.",
        "Mixed feelings about the {product}.",
        "Does the job, nothing more.",
        "Not bad, not amazing.",
        "Three stars feels right.",
        "I'm on the fence about this one.",
    ],
    "negative": [
        "Very disappointed with the {product}.",
        "Do not buy.",
        "Returned it after {days} days.",
        "I wanted to like this, I really did.",
        "One star, and that's generous.",
        "Total waste of money.",
    ],
}

ASPECT_LINES = {
    "positive": [
        "{Aspect} {is} excellent.",
        "{Aspect} exceeded my expectations, especially after {days} days of daily use.",
        "I was worried about {aspect}, but it's great.",
        "{Aspect}? Flawless.",
        "Can't fault {aspect} at all.",
    ],
    "neutral": [
        "{Aspect} {is} okay, though I've seen better.",
        "{Aspect} {is} average for this price range.",
        "{Aspect} took some getting used to.",
        "No complaints about {aspect}, no praise either.",
    ],
    "negative": [
        "{Aspect} {is} terrible.",
        "{Aspect} failed after {days} days.",
        "Had problems with {aspect} from day one.",
        "{Aspect} {is} nothing like the photos.",
        "Customer service didn't help with {aspect} either.",
    ],
}

PLURAL_ASPECTS = {"the menus", "the results", "the wheels", "the zippers", "the colours"}

CLOSERS = {
    "positive": ["Would recommend!", "Buying another as a gift.", "10/10.", "", "Great value."],
    "neutral": ["Might keep it.", "Your mileage may vary.", "", "It's fine for the money."],
    "negative": ["Avoid.", "Asked for a refund.", "", "Save your money.", "Never again!!"],
}

# Hand-written rows for the awkward cases a CSV reader and a prompt must survive.
SPECIAL_ROWS = [
    ("TrailMax Hiking Boots", 1, 'The box said "waterproof". They are not "waterproof".'),
    (
        "Nimbus Memory Foam Pillow",
        2,
        'Comfy, but the label says "100% natural" and it smells like a tyre shop.',
    ),
    (
        "Aurora Wireless Earbuds",
        3,
        "First week: loved them.\nSecond week: the left one stopped charging.\n\nUpdate: replaced.",
    ),
    (
        "Sprout Kids' Water Bottle",
        2,
        "Pros: light, cheap, colourful\nCons: the lid leaks, the paint chips, the straw is tiny",
    ),
    (
        "BrewMaster 12-Cup Coffee Maker",
        4,
        "Café-quality coffee at home? Not quite, but close enough 👍",
    ),
    ("Lumen Smart Bulb (4-pack)", 5, "Arrived in 2 days, works perfectly — 5/5 ⭐⭐⭐⭐⭐"),
    (
        "Forge Cast-Iron Skillet",
        5,
        "Naïve of me to expect restaurant results, but the sear is wonderful.",
    ),
    (
        "Summit Yoga Mat",
        5,
        "Price was €39, worth every cent. The mat doesn't slip even in hot yoga 🔥",
    ),
    ("Zephyr Desk Fan", 3, "Meh."),
    ("Quill Gel Pens, 12 colours", 1, "Broke after 2 days!!!"),
    ("Atlas Carry-On Suitcase", 3, "Colour is 'sage green', which in practice means grey."),
    (
        "Orbit Robot Vacuum",
        2,
        "It works, I guess, but the app asks for my location, contacts, and microphone. Why?",
    ),
    ("Crème de la Crème Face Serum", 5, "我很喜欢 — my mum in Shanghai loves it too."),
    ('PixelPro 27" Monitor', 3, "Okay product; terrible packaging; arrived dented; works anyway."),
]

# Exact duplicates: short texts many shoppers write word for word.
DUPLICATE_TEXTS = [
    ("Great product, works as described.", 5),
    ("Does what it says on the tin.", 4),
    ("Stopped working after a week.", 1),
]


def sentiment(rating: int) -> str:
    return "positive" if rating >= 4 else "negative" if rating <= 2 else "neutral"


def compose(rng: random.Random, product: str, rating: int) -> str:
    """One review: an opener, one to three aspect lines and maybe a closer."""
    mood = sentiment(rating)
    aspects = rng.sample(PRODUCTS[product], k=min(len(PRODUCTS[product]), rng.randint(1, 3)))
    parts = [rng.choice(OPENERS[mood])]
    for aspect, line in zip(aspects, rng.sample(ASPECT_LINES[mood], k=len(aspects)), strict=True):
        verb = "are" if aspect in PLURAL_ASPECTS else "is"
        line = line.replace("{Aspect}", aspect[0].upper() + aspect[1:]).replace("{is}", verb)
        parts.append(line.replace("{aspect}", aspect))
    parts.append(rng.choice(CLOSERS[mood]))
    text = " ".join(p for p in parts if p).replace("{product}", product)
    return text.replace("{days}", str(rng.choice([2, 3, 10, 30, 90])))


def image_urls(rng: random.Random, review_id: str) -> list[str] | None:
    if rng.random() >= IMAGE_SHARE:
        return None
    count = rng.randint(1, 3)
    return [f"https://images.example.com/reviews/{review_id}/{n}.jpg" for n in range(1, count + 1)]


def make_rows(rng: random.Random) -> list[dict[str, object]]:
    specials = dict(zip(rng.sample(range(ROWS), len(SPECIAL_ROWS)), SPECIAL_ROWS, strict=True))
    ids = sorted(rng.sample(range(100, 999_999), ROWS))  # real ids are sparse, not positions
    rows = [make_row(rng, f"R{n:06d}", specials.get(i)) for i, n in enumerate(ids)]
    add_duplicates(rng, rows, set(specials))
    return rows


def make_row(
    rng: random.Random, review_id: str, special: tuple[str, int, str] | None
) -> dict[str, object]:
    product = rng.choice(list(PRODUCTS))
    rating = rng.choices([1, 2, 3, 4, 5], weights=[12, 8, 15, 25, 40])[0]
    if special is not None:
        product, rating, text = special
    else:
        text = compose(rng, product, rating)
    images = image_urls(rng, review_id)
    return {"review_id": review_id, "product": product, "rating": rating, "text": text,
            "images": images}  # fmt: skip


def add_duplicates(rng: random.Random, rows: list[dict[str, object]], taken: set[int]) -> None:
    """Each duplicate text goes to two or three rows, none of them with images."""
    free = [i for i in range(len(rows)) if i not in taken]
    for text, rating in DUPLICATE_TEXTS:
        for index in rng.sample(free, k=rng.randint(2, 3)):
            free.remove(index)
            rows[index].update(text=text, rating=rating, images=None)


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            images = row["images"]
            writer.writerow({**row, "images": json.dumps(images) if images else ""})


def write_parquet(rows: list[dict[str, object]], path: Path) -> None:
    schema = pa.schema(
        [
            ("review_id", pa.string()),
            ("product", pa.string()),
            ("rating", pa.int64()),
            ("text", pa.string()),
            ("images", pa.list_(pa.string())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def main() -> None:
    rows = make_rows(random.Random(SEED))
    write_csv(rows, HERE / "reviews.csv")
    write_parquet(rows, HERE / "reviews.parquet")
    print(f"wrote {len(rows)} rows to {HERE / 'reviews.csv'} and {HERE / 'reviews.parquet'}")


if __name__ == "__main__":
    main()
