// Greedy continuation of a token-id prompt with llama.cpp's public API (llama.h), for
// bench/compat_llamacpp.py: reads "n_predict id id id ..." lines on stdin, prints the
// generated ids, one line per prompt. No tokenizer and no sampler involved: the prompt ids
// are the reference's own and the next token is the argmax of llama.cpp's logits, so the
// comparison with transformers is exact token for token.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: %s MODEL.gguf [n_threads] < prompts\n", argv[0]); return 2; }
  int n_threads = argc > 2 ? std::stoi(argv[2]) : 2;
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) { std::fprintf(stderr, "llama.cpp could not load %s\n", argv[1]); return 1; }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    int n_predict = 0;
    in >> n_predict;
    std::vector<llama_token> ids;
    for (llama_token t; in >> t;) ids.push_back(t);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(ids.size() + n_predict + 8);
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_threads = cp.n_threads_batch = n_threads;
    llama_context* ctx = llama_init_from_model(model, cp);  // fresh state per prompt
    if (!ctx) { std::fprintf(stderr, "llama_init_from_model failed\n"); return 1; }
    std::vector<llama_token> out;
    llama_batch batch = llama_batch_get_one(ids.data(), (int32_t)ids.size());
    llama_token next = 0;
    for (int i = 0; i < n_predict; ++i) {
      if (llama_decode(ctx, batch) != 0) { std::fprintf(stderr, "llama_decode failed\n"); return 1; }
      const float* logits = llama_get_logits_ith(ctx, -1);
      next = 0;
      for (int v = 1; v < n_vocab; ++v) if (logits[v] > logits[next]) next = v;
      out.push_back(next);
      batch = llama_batch_get_one(&next, 1);
    }
    for (size_t i = 0; i < out.size(); ++i) std::printf(i ? " %d" : "%d", out[i]);
    std::printf("\n");
    std::fflush(stdout);
    llama_free(ctx);
  }
  llama_model_free(model);
  return 0;
}
