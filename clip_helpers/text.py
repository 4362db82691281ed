"""Captions and the text tower: class names to prompts, prompts to features."""
import re

import clip
import torch

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# openai/CLIP data/prompts.md, CIFAR-10: the 18 prompts whose averaged embeddings give the paper's 91.3%.
CIFAR10_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
]


# The paper's single prompt, the first of its CIFAR-10 templates.
PROMPT = "a photo of a {}."


def fill(template: str, name: str) -> str:
    """The caption `template` makes of a class name: "a photo of a {}." -> "a photo of an astronaut.".

    The article before the name agrees with it ("an" before a vowel sound: "an orange circle", but "a unicorn").
    OpenAI's templates are filled literally ("a photo of a airplane."); the kit writes English, for the
    mini-CLIP's captions and for the pretrained model's prompts alike.
    """
    text = template.format(name)
    if re.match(r"[aeiou]", name, re.IGNORECASE) and not re.match(r"(uni|use|usu|eu|one\b)", name, re.IGNORECASE):
        text = re.sub(r"\b([aA]) (?=" + re.escape(name) + ")", r"\1n ", text)
    return text


def texts_from_labels(class_names: list[str], template: str = "{}", labels=None) -> list[str]:
    """One caption per class, or per label when `labels` is given. The report used the bare name ("{}")."""
    if labels is None:
        return [fill(template, name) for name in class_names]
    return [fill(template, class_names[int(label)]) for label in labels]


def list_of_strings(values, name: str = "texts") -> list[str]:
    """`values` as a list of strings, refusing a bare string (whose characters would each become a text) and []."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings, got the string {values!r}: pass [{values!r}] for one.")
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty: give at least one.")
    others = [value for value in values if not isinstance(value, str)]
    if others:
        raise TypeError(f"{name} must hold strings only, got {others[0]!r} ({type(others[0]).__name__}).")
    return values


def same_captions(class_names: list[str], templates=("{}",)) -> list[list[int]]:
    """Groups (of two or more indices) of class names whose captions CLIP's tokenizer cannot tell apart.

    The tokenizer lowercases, drops spaces and splits off punctuation, so "cat", "Cat" and "cat " give the same
    token ids, hence identical text features and identical classifier rows. Names are compared by the token ids
    of every filled template (as the model reads them, up to clip's 77-token context), not as strings.
    """
    if not class_names:
        return []
    texts = [fill(template, name) for name in class_names for template in templates]
    tokens = clip.tokenize(texts, truncate=True).reshape(len(class_names), -1)
    groups = {}
    for index, row in enumerate(tokens):
        groups.setdefault(tuple(row.tolist()), []).append(index)
    return [group for group in groups.values() if len(group) > 1]


def tokenize(model, texts: list[str]) -> torch.Tensor:
    """BPE token ids padded to the model's context length, as `model.encode_text` expects them."""
    return clip.tokenize(list_of_strings(texts), context_length=model.context_length)


def encode_texts(model, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
    """Unnormalised text features, equal to `model.encode_text(tokenize(model, texts))`, but cheaper.

    Each distinct text is encoded once. The text transformer's mask is causal, so the tokens after the
    longest end-of-text token cannot change any feature: we run only that many positions instead of
    the full context (77 for OpenAI's models; a class-name caption needs about 6). At most `batch_size`
    texts go through the transformer at once, so Caltech-256's 257 x 18 prompts do not all hold activations
    together.
    """
    texts = list_of_strings(texts)
    unique = list(dict.fromkeys(texts))
    features = torch.cat([encode_distinct(model, unique[start:start + batch_size])
                          for start in range(0, len(unique), batch_size)])
    position = {text: i for i, text in enumerate(unique)}
    return features[torch.tensor([position[text] for text in texts], device=features.device)]


def encode_distinct(model, texts: list[str]) -> torch.Tensor:
    tokens = tokenize(model, texts).to(model.positional_embedding.device)
    end = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
    length = int(end.max()) + 1
    x = model.token_embedding(tokens[:, :length]).type(model.dtype)
    x = x + model.positional_embedding[:length].type(model.dtype)
    x = causal_transformer(model.transformer, x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x).type(model.dtype)
    return x[torch.arange(len(texts)), end] @ model.text_projection


def causal_transformer(transformer, x):
    """clip's residual blocks on a sequence shorter than the context, with a causal mask to match."""
    length = x.shape[0]
    mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
    for block in transformer.resblocks:
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    return x
