"""Bark's fixed token layout and rates (from Suno's generation.py; see bark-facts.md)."""

from __future__ import annotations

# --- semantic stage -------------------------------------------------------
SEMANTIC_VOCAB_SIZE = 10_000  # semantic tokens are 0..9_999
SEMANTIC_PAD_TOKEN = 10_000  # pads the semantic history; also the EOS logit index
TEXT_ENCODING_OFFSET = 10_048  # BERT ids are shifted by this into the text model's vocab
TEXT_PAD_TOKEN = 129_595
SEMANTIC_INFER_TOKEN = 129_599
MAX_TEXT_TOKENS = 256  # text prompt length (cut and padded to this)
MAX_SEMANTIC_HISTORY_TOKENS = 256  # semantic history block length
SEMANTIC_PROMPT_LEN = MAX_TEXT_TOKENS + 1  # merged text+history block, then the infer token
MAX_SEMANTIC_STEPS = 768  # hard cap of the reference loop
SEMANTIC_RATE_HZ = 49.9

# --- coarse stage ---------------------------------------------------------
CODEBOOK_SIZE = 1024
N_COARSE_CODEBOOKS = 2
N_FINE_CODEBOOKS = 8
COARSE_RATE_HZ = 75
COARSE_SEMANTIC_PAD_TOKEN = 12_048
COARSE_INFER_TOKEN = 12_050
SEMANTIC_TO_COARSE_RATIO = COARSE_RATE_HZ / SEMANTIC_RATE_HZ * N_COARSE_CODEBOOKS  # ~3.006
MAX_COARSE_HISTORY = 630  # coarse tokens of history in each window prompt
COARSE_WINDOW_LEN = 60  # coarse tokens generated per window
MAX_COARSE_SEMANTIC_HISTORY = int(MAX_COARSE_HISTORY // SEMANTIC_TO_COARSE_RATIO)  # 209
COARSE_SEMANTIC_WINDOW = 256  # semantic tokens in each window prompt

# --- fine stage -----------------------------------------------------------
FINE_WINDOW = 1024  # frames per fine window (the model's block size)
FINE_HOP = 512  # offline window advance
MAX_FINE_HISTORY = 512  # voice fine-history frames used
FINE_PAD_TOKEN = CODEBOOK_SIZE  # unknown codebooks are filled with this

# --- audio ----------------------------------------------------------------
SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 320  # one EnCodec frame at 75 Hz
