-- Fashion-MNIST classes, the wordings used in training captions, and the
-- (different) prompts used to evaluate zero-shot classification.
local M = {}

M.mean, M.std = 0.2860, 0.3530 -- of the training pixels (x / 255)

M.names = { "t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot" }

M.train_words = {
  { "t-shirt", "tee", "tee shirt", "top", "short sleeve top" },
  { "trousers", "pants", "slacks", "jeans", "pair of trousers" },
  { "pullover", "sweater", "jumper", "knitted pullover", "long sleeve sweater" },
  { "dress", "gown", "frock", "summer dress", "long dress" },
  { "coat", "jacket", "overcoat", "winter coat", "zip jacket" },
  { "sandal", "sandals", "flip flop", "strappy sandal", "open shoe" },
  { "shirt", "button-up shirt", "blouse", "collared shirt", "dress shirt" },
  { "sneaker", "running shoe", "trainer", "sports shoe", "low top sneaker" },
  { "bag", "handbag", "purse", "tote bag", "shoulder bag" },
  { "ankle boot", "boot", "short boot", "bootie", "heeled ankle boot" },
}

M.train_templates = {
  "{}", "a {}", "a photo of a {}", "a picture of a {}", "an image of a {}",
  "a grayscale photo of a {}", "a small photo of a {}", "a {} on a black background",
  "a low resolution image of a {}", "product shot of a {}", "a plain {}", "a dark {}",
  "a light {}", "white {}", "black {}", "a {} for sale", "my new {}", "a {}, front view",
}

-- never used in training: zero-shot must generalize to these
M.eval_templates = {
  "a photo of the {}.", "a cropped photo of the {}.", "a close-up photo of one {}.",
  "this is a {}.", "an item of clothing: the {}.",
}

-- folder names for the exported image folders (one per class, sorted = class order)
M.folders = { "0_t-shirt", "1_trousers", "2_pullover", "3_dress", "4_coat", "5_sandal", "6_shirt",
  "7_sneaker", "8_bag", "9_ankle_boot" }

-- product-listing titles, a wording never used in pretraining: the fine-tuning
-- demo learns to match them (the seed's title/thumbnail task)
M.titles = {
  { "Essential crew neck cotton tee", "Graphic print short sleeve tee", "Relaxed fit everyday tee",
    "Soft jersey basic tee for summer" },
  { "Slim fit chino trousers", "High waisted wide leg trousers", "Classic straight leg denim",
    "Tailored pleated office trousers" },
  { "Chunky cable knit jumper", "Cozy crew neck wool pullover", "Fine knit merino sweater",
    "Oversized ribbed knit jumper" },
  { "Floral wrap midi dress", "Sleeveless evening cocktail dress", "Flowy maxi dress for summer",
    "Little black party dress" },
  { "Double breasted wool overcoat", "Quilted puffer coat with hood", "Classic trench coat",
    "Warm padded parka for winter" },
  { "Strappy leather summer sandals", "Beach slides with cushioned sole", "Flat gladiator sandals",
    "Open toe platform sandals" },
  { "Oxford button down office shirt", "Slim fit poplin dress shirt", "Checked flannel shirt",
    "Linen shirt with long sleeves" },
  { "Lightweight mesh running trainers", "Classic white leather sneakers", "Retro low top court shoes",
    "Breathable knit sports trainers" },
  { "Leather crossbody handbag", "Canvas shopper tote", "Quilted chain shoulder bag",
    "Compact clutch purse" },
  { "Chelsea ankle boots in suede", "Lace up leather ankle boots", "Block heel ankle booties",
    "Zip side ankle boots" },
}

return M
