#!/usr/bin/python3
"""Reference vectors for the kvtc engine, made with the real libraries (tokenizers, transformers).

Run on the GPU machine (torch 2.11, transformers 5.17, tokenizers 0.23) from the repo root:
  python3 tests/data/make_engine_ref.py MODEL_DIR CORPUS_DIR OUT_DIR
MODEL_DIR is shared/models/kvtc-ref-26m (config, tokenizer, bf16 shards); CORPUS_DIR holds the
*.txt.xz and *.docs.tsv files of shared/corpus. Writes to OUT_DIR (then copied to tests/data/):
  engine_tokenizer_ref.json     texts -> ids (tokenizers, with and without special tokens), decode()
                                of those ids and of random id lists
  engine_tokenizer_corpus.json  per document of the four corpus files: token count and FNV-1a 64 of
                                the ids (as little-endian uint32)
  engine_logits_ref.safetensors per prompt: ids, full fp32 logits of the last positions, top-5 ids and
                                logits and logsumexp at every position, greedy continuation
  engine_cache_ref.safetensors  k.<l>, v.<l> [2, T, 128] and q.<l> [4, 4, 128] (RoPE applied), fp32,
                                for a short prompt
  engine_ref_meta.json          prompts, versions, and the CPU-vs-GPU logit differences of transformers
The forward runs in fp32 on the CPU with eager attention (deterministic); the same forward on the GPU
(fp32, TF32 off) is compared with it to show how far two correct fp32 implementations drift apart.
"""
import json, lzma, os, struct, sys, time

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
import transformers
from transformers import AutoModelForCausalLM

MODEL, CORPUS, OUT = sys.argv[1:4]
os.makedirs(OUT, exist_ok=True)
T0 = time.time()
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_num_threads(max(1, os.cpu_count() or 1))

tok = Tokenizer.from_file(os.path.join(MODEL, 'tokenizer.json'))
BOS, EOS = 0, 1


def enc(text, special=False):
    return tok.encode(text, add_special_tokens=special).ids


# ---------------------------------------------------------------- tokenizer vectors
TEXTS = [
    '', ' ', '  ', '\n', '\n\n\n', 'a', 'Hello world', 'Hello  world   ', '   leading spaces', 'trailing \n',
    "don't I'll we've they're it's she'd you'm", "DON'T WE'LL", "'s 's' ''", 'x\ty\t\tz\n\tindent',
    'Windows\r\nline\rends\r\n', '12345 3.14159 1,000,000 0x1F -42 1e-9', 'a' * 50 + ' ' + '=' * 300, '9' * 120,
    'int main(void) {\n\treturn printf("%d\\n", argc);\n}\n',
    'func (s *Server) Serve(l net.Listener) error {\n\tdefer l.Close()\n\treturn nil\n}\n',
    'Café au lait, naïve façade, Ångström, Øresund, crème brûlée, Straße',
    'e\u0301 n\u0303 combining marks; \ufb01 ligature; \u00bd fractions \u00b2 \u2167',
    '日本語のテキストと中文字符。한국어 텍스트입니다.',
    'Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 🫨 ✓ ∑ ∞ ≠ ☃',
    'Ελληνικά, русский язык, العربية, עברית, हिन्दी भाषा, ภาษาไทย',
    'nbsp:a\u00a0b thin:a\u2009b ideographic:a\u3000b line-sep:a\u2028b nel:a\u0085b mvs:a\u180eb zwsp:a\u200bb',
    'a\u00a0\u00a0 b\u3000\u3000c \u2003x\u2003',
    'vt\x0bff\x0cfs\x1cgs\x1drs\x1eus\x1f end',
    '<|bos|>inside text<|eos|> and <|pad|><|pad|>x',
    '<|bos <|eos| |bos|> <|BOS|>',
    'Kawi \U00011F04\U00011F05 Unicode 15 letters; Nag Mundari \U0001E4D0\U0001E4D1',
    'The pass key is 48213. Remember it. 48213 is the pass key.\nWhat is the pass key? The pass key is',
    'key tavo: 123456\nkey plishu: 987654\nQuery: the value of key tavo is',
    '\u0000nul\u0001soh\u007fdel',
    'mixed\u00a0\n\u3000\n  \n\t \n',
]

decode_cases = []
rng = np.random.default_rng(3)
for n in (1, 2, 3, 5, 20, 40):
    for _ in range(3):
        ids = [int(x) for x in rng.integers(3, tok.get_vocab_size(), n)]
        decode_cases.append({'ids': ids, 'text': tok.decode(ids, skip_special_tokens=False)})
decode_cases.append({'ids': [0, 100, 1, 2, 200], 'text': tok.decode([0, 100, 1, 2, 200], skip_special_tokens=False),
                     'text_skip_special': tok.decode([0, 100, 1, 2, 200], skip_special_tokens=True)})

try:
    from transformers import PreTrainedTokenizerFast
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(MODEL, 'tokenizer.json'))
    hf_same = all(hf_tok(t)['input_ids'] == enc(t, True) for t in TEXTS)
except Exception as e:  # noqa: BLE001
    hf_same = repr(e)

tok_ref = {
    'tokenizers_version': __import__('tokenizers').__version__,
    'transformers_tokenizer_agrees': hf_same,
    'cases': [{'text': t, 'ids': enc(t), 'ids_special': enc(t, True), 'decoded': tok.decode(enc(t), skip_special_tokens=False)}
              for t in TEXTS],
    'decode_cases': decode_cases,
}
json.dump(tok_ref, open(os.path.join(OUT, 'engine_tokenizer_ref.json'), 'w'), ensure_ascii=True, indent=0)
print('tokenizer cases', len(TEXTS), 'transformers agrees:', hf_same, flush=True)


def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for b in np.asarray(ids, dtype='<u4').tobytes():
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    return '%016x' % h


def read_docs(path):
    return lzma.open(path, 'rt', encoding='utf-8').read()[:-1].split('\n\x1e\n')


corpus_ref = {}
docs_by_file = {}
for name in ('prose.valid', 'code.valid', 'prose.test', 'code.test'):
    docs = read_docs(os.path.join(CORPUS, name + '.txt.xz'))
    docs_by_file[name] = docs
    encs = tok.encode_batch(docs, add_special_tokens=False)
    corpus_ref[name] = [[len(e.ids), fnv1a64(e.ids)] for e in encs]
    print(name, len(docs), 'docs', sum(r[0] for r in corpus_ref[name]), 'tokens', flush=True)
json.dump(corpus_ref, open(os.path.join(OUT, 'engine_tokenizer_corpus.json'), 'w'), separators=(',', ':'))

# ---------------------------------------------------------------- prompts (formats of train/train_eval.py)
INTRO = ('There is an important piece of information hidden inside a lot of irrelevant text. '
         'Find it and memorize it. I will quiz you about the important information there.\n\n')


def bible_verses():
    import re
    srcs = [l.split('\t')[1] for l in open(os.path.join(CORPUS, 'prose.test.docs.tsv')).read().splitlines()[1:]]
    vs = []
    for d, s in zip(docs_by_file['prose.test'], srcs):
        if s != 'bible':
            continue
        for line in d.split('\n')[2:]:
            m = re.match(r'\d+ (.*)', line)
            if m:
                vs.append(m.group(1).strip())
    return vs


def passkey_text(r, target, depth, key):
    vs = bible_verses()
    vlens = [len(e.ids) for e in tok.encode_batch([' ' + v for v in vs], add_special_tokens=False)]
    need = max(8, target - 75)
    idx, tot = [], 0
    while tot < need:
        j = int(r.integers(len(vs)))
        idx.append(j); tot += vlens[j]
    cum = np.cumsum([vlens[j] for j in idx])
    k = int(np.searchsorted(cum, depth * tot))
    before = ' '.join(vs[j] for j in idx[:k])
    after = ' '.join(vs[j] for j in idx[k:])
    return (INTRO + before + f'\nThe pass key is {key}. Remember it. {key} is the pass key.\n' + after +
            '\nWhat is the pass key? The pass key is')


CONS = list('bdfgklmnprstvz') + ['ch', 'sh', 'tr', 'pl']
VOW = list('aeiou')


def multikey_text(r, nkeys):
    def rand_word():
        return ''.join(CONS[int(r.integers(len(CONS)))] + VOW[int(r.integers(len(VOW)))]
                       for _ in range(int(r.integers(2, 4))))
    keys, seen = [], set()
    while len(keys) < nkeys:
        w = rand_word()
        if w not in seen:
            seen.add(w); keys.append((w, int(r.integers(100000, 1000000))))
    q = keys[int(r.integers(nkeys))]
    return ('Below is a list of keys and their values. Remember them.\n' +
            '\n'.join(f'key {w}: {v}' for w, v in keys) + f'\nQuery: the value of key {q[0]} is'), str(q[1])


def long_text(target_tokens):
    # The start of the first code.test document long enough, cut at a line end to <= target tokens.
    doc = next(d for d in docs_by_file['code.test'] if len(d) > target_tokens * 4)
    text = doc[:target_tokens * 6]
    while len(enc(text)) + 1 > target_tokens and '\n' in text[:-1]:
        text = text[:text.rstrip('\n').rfind('\n') + 1]
    return text


r = np.random.default_rng(11)
pk_key = str(int(r.integers(10000, 100000)))
mk_text, mk_answer = multikey_text(np.random.default_rng(12), 50)
PROMPTS = [
    ('prose', 'Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n2 And the earth was without form, '
              'and void; and darkness was upon the face of the deep.', 2, 24),
    ('code_c', '#include <linux/kernel.h>\n#include <linux/module.h>\n\nstatic int', 2, 32),
    ('code_go', 'package main\n\nimport (\n\t"fmt"\n)\n\nfunc main() {\n\tfmt.Println("héllo, 世界")\n', 2, 24),
    ('unicode', 'Café au lait, naïve façade — «quotes» “smart” ‘single’… 日本語のテキストと中文字符。'
                'Emoji: 😀👍🏽 👨‍👩‍👧‍👦 ✓ ∑ ∞. Ελληνικά, русский.', 2, 16),
    ('passkey_1k', passkey_text(r, 1016, 0.5, pk_key), 1, 8),
    ('multikey_50', mk_text, 1, 8),
    ('long_4k', long_text(4096), 1, 0),
]

# ---------------------------------------------------------------- transformers forward (fp32, CPU eager)
def load(device):
    try:
        m = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation='eager')
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32, attn_implementation='eager')
    return m.to(device).eval()


cpu = load('cpu')
gpu = load('cuda') if torch.cuda.is_available() else None
tensors = {}
meta_prompts = []
gpu_diff = {}
with torch.no_grad():
    for name, text, n_full, n_greedy in PROMPTS:
        ids = [BOS] + enc(text)
        x = torch.tensor([ids])
        t1 = time.time()
        logits = cpu(x).logits[0].float()  # [T, V]
        t_cpu = time.time() - t1
        lse = torch.logsumexp(logits.double(), -1).float()
        top = torch.topk(logits, 5, dim=-1)
        tensors[f'{name}.ids'] = torch.tensor(ids, dtype=torch.int32)
        tensors[f'{name}.logits'] = logits[-n_full:].contiguous()
        tensors[f'{name}.top5_ids'] = top.indices.to(torch.int16).contiguous()
        tensors[f'{name}.top5_logits'] = top.values.contiguous()
        tensors[f'{name}.lse'] = lse.contiguous()
        if gpu is not None:
            lg = gpu(x.cuda()).logits[0].float().cpu()
            d = (lg - logits).abs()
            gpu_diff[name] = {'max_abs': float(d.max()), 'max_abs_last': float(d[-1].max()),
                              'argmax_disagree': int((lg.argmax(-1) != logits.argmax(-1)).sum())}
        if n_greedy:
            out = cpu.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_greedy, do_sample=False,
                               eos_token_id=None, pad_token_id=2)
            tensors[f'{name}.greedy'] = out[0, len(ids):].to(torch.int32).contiguous()
            greedy_text = tok.decode(out[0, len(ids):].tolist())
        else:
            greedy_text = ''
        meta_prompts.append({'name': name, 'text': text, 'n_tokens': len(ids), 'n_full_logits': n_full,
                             'n_greedy': n_greedy, 'greedy_text': greedy_text, 'cpu_seconds': round(t_cpu, 3)})
        print(name, len(ids), 'tokens', repr(greedy_text), gpu_diff.get(name), flush=True)
save_file(tensors, os.path.join(OUT, 'engine_logits_ref.safetensors'),
          metadata={'source': 'tests/data/make_engine_ref.py', 'transformers': transformers.__version__})

# ---------------------------------------------------------------- cache dump (as shared/kvcache/make_caches.py)
cache_text = 'The quick brown fox jumps over'
ids = [BOS] + enc(cache_text)
n_q = 4
qs = {}
hooks = [layer.self_attn.q_proj.register_forward_hook(lambda mod, i, o, li=li: qs.__setitem__(li, o.detach()))
         for li, layer in enumerate(cpu.model.layers)]
with torch.no_grad():
    out = cpu(torch.tensor([ids]), use_cache=True)
for h in hooks:
    h.remove()
cfg = cpu.config
H, d = cfg.num_attention_heads, cfg.head_dim
pos = torch.arange(len(ids))[None]
cos, sin = cpu.model.rotary_emb(torch.zeros(1), pos)
pkv = out.past_key_values
ct = {}
for l in range(cfg.num_hidden_layers):
    if hasattr(pkv, 'layers'):
        k, v = pkv.layers[l].keys, pkv.layers[l].values
    else:
        k, v = pkv.key_cache[l], pkv.value_cache[l]
    ct[f'k.{l}'] = k[0].float().contiguous()
    ct[f'v.{l}'] = v[0].float().contiguous()
    q = qs[l][0].view(len(ids), H, d).transpose(0, 1)
    d2 = d // 2
    q = q * cos[0][None] + torch.cat([-q[..., d2:], q[..., :d2]], -1) * sin[0][None]
    ct[f'q.{l}'] = q[:, -n_q:].float().contiguous()
save_file(ct, os.path.join(OUT, 'engine_cache_ref.safetensors'),
          metadata={'num_layers': str(cfg.num_hidden_layers), 'num_kv_heads': str(cfg.num_key_value_heads),
                    'num_heads': str(H), 'head_dim': str(d), 'rope_theta': '100000', 'rope_style': 'half',
                    'position_offset': '0', 'tokens': str(len(ids)), 'text': cache_text,
                    'ids': json.dumps(ids), 'model': 'kvtc-ref-26m'})

meta = {'torch': torch.__version__, 'transformers': transformers.__version__,
        'tokenizers': __import__('tokenizers').__version__, 'device_gpu': torch.cuda.get_device_name(0) if gpu else None,
        'attention': 'eager', 'dtype': 'float32', 'reference': 'cpu', 'passkey_key': pk_key,
        'multikey_answer': mk_answer, 'gpu_vs_cpu_logits': gpu_diff, 'prompts': meta_prompts,
        'cache_text': cache_text, 'seconds': round(time.time() - T0, 1)}
json.dump(meta, open(os.path.join(OUT, 'engine_ref_meta.json'), 'w'), ensure_ascii=True, indent=1)
print('done in', round(time.time() - T0, 1), 's', flush=True)
