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

return M
