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

-- Product-listing titles for the fine-tuning demo: "{line} {shade}{detail}".
-- A shop names its items by its own product lines: each class is sold under a
-- line name that pretraining never saw (its captions use only train_words), so
-- before fine-tuning the text tower has no idea that a "Velmora" is a dress.
-- The shade is read off the image (its mean brightness). The negative of a row
-- is another line in the same shade, so only the new vocabulary tells them apart.
M.lines = { "Kavri", "Tolven", "Brannoc", "Velmora", "Osgar", "Lunetta", "Corvel", "Zephyr", "Maribel", "Stroud" }
M.shades = { "black", "dark grey", "light grey", "white" }
M.title_details = { "", ", size M", ", size S", " for women", " for men", " (new season)", " - bestseller",
  ", free delivery", ", slim fit", ", classic cut" }

--- shade index (1..4) of a 28x28 image from its mean pixel value (0..255),
-- thresholds at the quartiles of the training set's item brightness
function M.shade_of(mean, q)
  if mean < q[1] then return 1 elseif mean < q[2] then return 2 elseif mean < q[3] then return 3 end
  return 4
end

function M.title(c, shade, rng)
  return M.lines[c] .. " " .. M.shades[shade] .. M.title_details[rng:random(#M.title_details)]
end

return M
