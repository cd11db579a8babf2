/* micro_config.h - the config.json of the micro model the loader target
 * fuzzes against (fuzz/seeds.lua writes matching weights as seeds). */
#ifndef CLIP_FUZZ_MICRO_CONFIG_H
#define CLIP_FUZZ_MICRO_CONFIG_H
static const char MICRO_CONFIG[] =
    "{\"model_type\": \"clip\", \"projection_dim\": 4,\n"
    " \"text_config\": {\"hidden_size\": 4, \"intermediate_size\": 8, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 1, \"vocab_size\": 8, \"max_position_embeddings\": 6,\n"
    "   \"bos_token_id\": 6, \"eos_token_id\": 7, \"pad_token_id\": 1},\n"
    " \"vision_config\": {\"hidden_size\": 4, \"intermediate_size\": 8, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 1, \"image_size\": 4, \"patch_size\": 2, \"num_channels\": 3}}\n";
#endif
