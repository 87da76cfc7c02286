"""Known checkpoints: hub id → published facts (parameters, context length, licence) with their sources.

Used by `ctxlab info` and `ctxlab card` to report what the model's publishers say next to what the config
computes. Lookup is by exact hub id (never by fuzzy name matching); unknown ids simply have no published facts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class License:
    name: str
    url: str
    # Redistribution terms ctxlab enforces on export of derived weights (e.g. Llama's naming rule).
    required_name_prefix: str | None = None
    attribution: str | None = None


APACHE2 = License("Apache 2.0", "https://www.apache.org/licenses/LICENSE-2.0")
GEMMA = License("Gemma Terms of Use", "https://ai.google.dev/gemma/terms")
LLAMA2 = License(
    "Llama 2 Community License Agreement", "https://ai.meta.com/llama/license/", None, "Built with Llama"
)
LLAMA3 = License(
    "Meta Llama 3 Community License Agreement", "https://www.llama.com/llama3/license/", "Llama 3",
    "Built with Meta Llama 3",
)
LLAMA31 = License(
    "Llama 3.1 Community License Agreement", "https://www.llama.com/llama3_1/license/", "Llama", "Built with Llama"
)
LLAMA32 = License(
    "Llama 3.2 Community License Agreement", "https://www.llama.com/llama3_2/license/", "Llama", "Built with Llama"
)
LLAMA4 = License(
    "Llama 4 Community License Agreement", "https://www.llama.com/llama4/license/", "Llama", "Built with Llama"
)
LICENSES = {
    "apache-2.0": APACHE2,
    "gemma": GEMMA,
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "llama3.1": LLAMA31,
    "llama3.2": LLAMA32,
    "llama4": LLAMA4,
}


@dataclass(frozen=True)
class Preset:
    hub_id: str
    family: str
    params: str  # as published
    context: str  # as published
    license: License
    active_params: str | None = None
    source: str = ""


PRESETS: dict[str, Preset] = {
    p.hub_id: p
    for p in [
        Preset("Qwen/Qwen3-0.6B", "qwen3", "0.6B (0.44B non-embedding)", "32,768", APACHE2, None,
               "Qwen3 model card / tech report Table 1"),
        Preset("Qwen/Qwen3-1.7B", "qwen3", "1.7B (1.4B non-embedding)", "32,768", APACHE2, None,
               "Qwen3 model card / tech report Table 1"),
        Preset("Qwen/Qwen3-4B", "qwen3", "4.0B (3.6B non-embedding)", "32,768 native; 131,072 with YaRN", APACHE2,
               None, "Qwen3 model card; tech report Table 1 (128K)"),
        Preset("Qwen/Qwen3-8B", "qwen3", "8.2B (6.95B non-embedding)", "32,768 native; 131,072 with YaRN", APACHE2,
               None, "Qwen3 model card"),
        Preset("HuggingFaceTB/SmolLM2-135M-Instruct", "llama", "135M", "8,192", APACHE2, None,
               "SmolLM2 model card (HuggingFaceTB/SmolLM2-135M-Instruct)"),
        Preset("google/gemma-3-270m", "gemma3_text", "270M (170M embedding, 100M transformer)", "32,768", GEMMA,
               None, "Gemma 3 270M model card"),
        Preset("google/gemma-2b", "gemma", "2B (1.98B non-embedding)", "8,192", GEMMA, None,
               "Gemma paper; gemma_pytorch config.py"),
        Preset("google/gemma-7b", "gemma", "7B (7.75B non-embedding)", "8,192", GEMMA, None,
               "Gemma paper; gemma_pytorch config.py"),
        Preset("google/recurrentgemma-2b", "recurrent_gemma", "2B non-embedding (2.68B total)",
               "unbounded by design (fixed-size state, 2,048-token local attention)", GEMMA, None,
               "RecurrentGemma paper; HF model card"),
        Preset("google/recurrentgemma-9b", "recurrent_gemma", "9B (8.58B total)",
               "unbounded by design (fixed-size state, 2,048-token local attention)", GEMMA, None,
               "RecurrentGemma paper v2"),
        Preset("meta-llama/Llama-2-7b-hf", "llama", "7B", "4,096", LLAMA2, None, "Llama 2 model card"),
        Preset("meta-llama/Meta-Llama-3-8B", "llama", "8B", "8,192", LLAMA3, None, "Llama 3 model card"),
        Preset("meta-llama/Llama-3.1-8B", "llama", "8B", "128K", LLAMA31, None, "Llama 3.1 model card"),
        Preset("meta-llama/Llama-3.2-1B", "llama", "1.23B", "128K", LLAMA32, None, "Llama 3.2 model card"),
        Preset("meta-llama/Llama-3.2-3B", "llama", "3.21B", "128K", LLAMA32, None, "Llama 3.2 model card"),
        Preset("meta-llama/Llama-4-Scout-17B-16E", "llama4", "109B total (text 107.8B)", "10M (instruct); 256K base",
               LLAMA4, "17B", "llama-models MODEL_CARD.md"),
        Preset("meta-llama/Llama-4-Maverick-17B-128E", "llama4", "400B total", "1M", LLAMA4, "17B",
               "llama-models MODEL_CARD.md"),
    ]
}


def preset_for(hub_id: str | None) -> Preset | None:
    return PRESETS.get(hub_id) if hub_id else None


def license_from_readme(readme_text: str) -> License | None:
    """The `license:` field of an HF model card's YAML front matter, mapped to a known licence."""
    if not readme_text.startswith("---"):
        return None
    front = readme_text.split("---", 2)[1] if readme_text.count("---") >= 2 else ""
    for line in front.splitlines():
        if line.strip().startswith("license:"):
            key = line.split(":", 1)[1].strip().strip("'\"").lower()
            return LICENSES.get(key, License(key, ""))
    return None
