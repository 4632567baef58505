"""The peer of `gemma-xla tokenize` (benches/tokenize.sh): HF tokenizers' Python
`Tokenizer.encode_batch` over the same jsonl corpus with the same tokenizer.json.

  tokenize_peer.py make SIZE_MB DIR   writes DIR/corpus.jsonl (about SIZE_MB MB of generated
                                      English-like sentences, seeded) and DIR/tokenizer.json, a
                                      32000-token byte-level BPE trained on its first 20 MB
                                      (with DIR/tokenizer_config.json: no BOS, eos <eos>)
  tokenize_peer.py time CORPUS TOKENIZER [BATCH]
                                      one JSON line: seconds, text bytes, tokens, documents
"""
import json
import random
import sys
import time


def make(size_mb, out):
    import os
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.makedirs(out, exist_ok=True)
    rng = random.Random(1234)
    syll = ["ka", "lo", "mi", "ren", "tas", "vo", "pel", "dri", "sun", "ber", "an", "ost", "li", "mar", "qu", "eth"]
    words = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(30000)})
    words += ["the", "a", "of", "and", "to", "in", "is", "was", "river", "hill", "bread", "morning", "city"] * 50
    sentences = []
    for _ in range(200000):
        n = rng.randint(5, 25)
        s = " ".join(rng.choice(words) for _ in range(n))
        sentences.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"]))
    target = size_mb * 1_000_000
    written = 0
    with open(os.path.join(out, "corpus.jsonl"), "w") as f:
        while written < target:
            doc = " ".join(rng.choices(sentences, k=rng.randint(3, 40)))
            line = json.dumps({"text": doc}) + "\n"
            f.write(line)
            written += len(line)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=32000, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def sample():
        seen = 0
        with open(os.path.join(out, "corpus.jsonl")) as f:
            for line in f:
                yield json.loads(line)["text"]
                seen += len(line)
                if seen > 20_000_000:
                    return

    tok.train_from_iterator(sample(), trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False, "eos_token": "<eos>", "bos_token": "<bos>"}, f)


def timed(corpus, tokenizer, batch=1000):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    t0 = time.perf_counter()
    tokens = docs = nbytes = 0
    texts = []

    def flush():
        nonlocal tokens
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            tokens += len(enc.ids) + 1  # + EOS, as gemma-xla tokenize appends
        texts.clear()

    with open(corpus, "rb") as f:
        for line in f:
            text = json.loads(line)["text"]
            texts.append(text)
            docs += 1
            nbytes += len(text.encode())
            if len(texts) == batch:
                flush()
    if texts:
        flush()
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "tokens": tokens, "documents": docs}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(int(sys.argv[2]), sys.argv[3])
    else:
        timed(sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
