"""One open question per notebook, with a model answer for the instructor: reveal("04").

The model answer prints only where the environment says an instructor runs the kernel (INSTRUCTOR_VARIABLE set
to 1); a student's kernel sees the question and where the answer will come from. A determined student can still
read this file: it is a courtesy, not a lock.
"""
import os
import textwrap

INSTRUCTOR_VARIABLE = "CLIP_KIT_INSTRUCTOR"

ANSWERS = {
    "01": (
        "The report validates on the first 3% of the same shuffled list whose first 30% it trains on. What does "
        "its validation accuracy measure, and what in the numbers would give the leak away?",
        "Every validation image is also a training image, so the score measures how well the model fits images it "
        "has already seen, not how it does on new ones. The tell-tale sign: validation keeps pace with training "
        "(or beats it) and never falls behind, however long training runs. A disjoint split, stratified by class "
        "and seeded, shows the real gap.",
    ),
    "02": (
        "The image encoder and the text encoder are different networks reading different inputs. What makes "
        "their outputs comparable at all?",
        "Only training does. Both end in a linear projection to the same dimension, and the contrastive loss pulls "
        "each image's vector towards its caption's and away from the others. With random weights the two spaces "
        "are unrelated and the cosines mean nothing. Normalising the vectors also drops their lengths, so only "
        "their directions are compared.",
    ),
    "03": (
        "Why compare directions (cosines) rather than raw dot products? What would one unusually long text "
        "vector do to a dot-product classifier?",
        "A dot product grows with the vectors' lengths. One long caption vector would score high with every image "
        "and win everywhere, and length tends to follow things like contrast or prompt wording, not meaning. The "
        "cosine removes length, so only direction (what is shown, what is said) counts. logit_scale then sets how "
        "sharp the softmax is, as one learned number instead of something that depends on lengths.",
    ),
    "04": (
        "The loss of an untrained model grows with the batch size. Does that mean larger batches are worse?",
        "No. With no signal the softmax is uniform over the n captions, so the loss starts near log n: a larger "
        "batch is a harder multiple-choice question, not a worse model. Compare losses against log n, or compare "
        "something that does not depend on n, such as zero-shot accuracy. More negatives make each gradient more "
        "informative (the paper used batches of 32,768). Duplicate captions add a floor too, (1/n) * sum of "
        "k log k: a limit set by the batch, not a failure of the model.",
    ),
    "05": (
        "The report's Adam(weight_decay=0.2) also decays logit_scale. What does that do during training, and why "
        "does the kit exempt it (and gains, biases, embeddings)?",
        "Adam's weight_decay adds 0.2 times the parameter to its gradient, a steady pull towards 0. logit_scale is "
        "stored as a log, and 0 there means a multiplier of 1 (logits equal to the raw cosines, a much flatter softmax), so "
        "the decay pulls the softmax flatter while the loss pushes it sharper as the pairs separate; over a long "
        "enough run it settles where the two balance, below where the loss alone would take it. How far it moves depends on the run's length, "
        "since Adam moves a parameter by about lr per step at most: at the report's lr of 5e-5, a thousand steps "
        "move the log (4.6 for a multiplier of 100) by at most about 0.05; a long run can pull it much further. "
        "Decay is meant to keep weight matrices small. A temperature, a gain, a bias or an embedding has no 'too "
        "large' to guard against, so the kit decays only matrices (AdamW with two parameter groups), and this "
        "notebook's run prints its logit_scale before and after fine-tuning.",
    ),
    "06": (
        "Suppose two captions in Fig 12 were 'a photo of a dog' and 'a photo of a puppy'. What would you expect "
        "off the diagonal, and would the model be wrong?",
        "Both captions should be bright in the dog photos' rows, so one entry off the diagonal lights up and the "
        "softmax of those rows splits its probability between the two captions. The model is right and the "
        "diagonal target is what is wrong: it calls the second caption a negative. This is why the kit's loss "
        "treats same-class pairs as positives.",
    ),
    "07": (
        "Suppose prompt ensembling raises top-1 by a point or two on 150 images. How would you decide whether the gain "
        "is real?",
        "Compare it with its uncertainty. The standard error of an accuracy p measured on n images is "
        "sqrt(p (1 - p) / n), about 3 points at p = 0.8 and n = 150, so a gain of a point or two tells us nothing. Two "
        "things help: a paired test on the same images (count only the images on which the two classifiers "
        "disagree, as McNemar's test does), and more images or more random subsets, with the gain reported as a "
        "mean and a spread.",
    ),
    "08": (
        "The mini-CLIP sees every colour and every shape in training but never some colour-shape pairs. What must "
        "it learn to name a held-out pair correctly, and does CLIP trained on 400M captions do that reliably?",
        "It must encode colour and shape as separate factors and bind each colour to its shape, in both encoders. "
        "Matching whole captions does not force this: a 'bag of words' that notes which words are present scores "
        "well on most batches. Measured on CLIP, binding often fails: Winoground (Thrush et al., 2022) and ARO "
        "(Yuksekgonul et al., 2023) find it frequently cannot tell 'a red square and a blue circle' from the "
        "swapped sentence. Held-out accuracy is evidence of composition only when it is clearly above the "
        "baselines: chance (1/36) and the right colour with a random shape.",
    ),
    "09": (
        "With a handful of labelled images per class, the linear probe can fall below zero-shot on the very same "
        "features, although it learns from labels and zero-shot learns from none. Why, and what would let the "
        "labels add to what the text already knows?",
        "A probe fitted on k images per class starts from nothing: it must estimate a direction per class "
        "from k noisy points, and with k = 1 or 2 it largely fits the particular images drawn (hence the "
        "spread between draws). The zero-shot classifier already holds a good direction per class, written in "
        "words and learned from millions of captions. The two do not add up because the probe ignores the "
        "text: starting L-BFGS from the zero-shot weights changes nothing (the regularised loss is convex, "
        "one optimum), but a penalty that pulls the probe towards the zero-shot rows instead of towards 0 "
        "does. Later work uses the text's classifier in other ways: WiSE-FT (Wortsman et al. 2022) fine-tunes "
        "the model and then interpolates its weights with the zero-shot model's; Tip-Adapter (Zhang et al. "
        "2022) trains nothing: it keeps the few-shot images' features and labels as a cache and adds the "
        "cache's similarity-weighted labels to the zero-shot logits. With more labelled images the probe "
        "overtakes zero-shot, as in the paper's Fig 6 (on average about 4 images per class).",
    ),
    "10": (
        "Here an image's true partners are all the captions of its class. How would recall@1 change if only one "
        "caption per image counted as right (as in MSCOCO), and which number better describes a search engine?",
        "It would fall, often sharply: with 7 or 18 captions per class that say the same thing about every image "
        "of the class, the image's one designated caption must beat every other caption of its class, which the "
        "pixels cannot decide; the result would be close to chance within the class. Counting every caption of the "
        "class as a partner measures whether the model finds the right kind of image, which is what a search "
        "engine over class-level queries needs. MSCOCO's protocol makes sense there because each caption was "
        "written for one image and describes it specifically. Either way, say which rule was used: the same model "
        "gives very different recall@k under the two.",
    ),
    "11": (
        "Your contrastive loss sits at log(batch size) from the first step to the last. List the causes you would "
        "check, in order, and the one measurement that tells each apart.",
        "A loss of exactly log n means every caption gets the same probability: the logits of a row are all equal. "
        "That happens when one tower's features do not depend on its input (a frozen or dead tower, or a collapse "
        "after a learning rate far too high: the cones' spread near 1, every feature the same direction), when "
        "logit_scale is near 0 (the logits are all near 0 whatever the cosines), or when nothing is updated at all "
        "(a learning rate far too low, parameters not given to the optimiser, gradients flushed to zero in fp16). "
        "Measure, in order: the spread of each tower's features on one batch (collapse or a dead tower), "
        "logit_scale, the gradient norm of each tower after one backward (frozen, unscaled fp16, or not in the "
        "optimiser), and the change of the parameters after one step (the learning rate).",
    ),
    "12": (
        "A colleague says: our model gives 0.31 to this image and caption, so they match. What would you ask "
        "before agreeing, and how would you decide instead?",
        "A cosine on its own means little: the modality gap puts every image-text cosine of a model in a narrow "
        "band of its own (a random model's band differs from a trained one's), so 0.31 may be high for one model "
        "and ordinary for another. Ask which model, and what the cosines of known matching and non-matching pairs "
        "of that model look like on data like theirs. Then decide with a threshold chosen on held-out labelled "
        "pairs (the value that classifies them best, or that reaches a chosen precision), report its accuracy on "
        "other pairs than those it was chosen on, or avoid thresholds and rank: the caption with the highest "
        "cosine of a row is a far more reliable statement than any absolute value.",
    ),
}


def key_of(notebook) -> str:
    key = f"{int(notebook):02d}" if isinstance(notebook, int) else str(notebook)[:2]
    if key not in ANSWERS:
        raise ValueError(f"No open question for notebook {notebook!r}; there is one for {', '.join(ANSWERS)} "
                         f"(e.g. reveal('04')).")
    return key


def question(notebook) -> str:
    """The open question of a notebook ("04", 4 or "04_contrastive_loss")."""
    return ANSWERS[key_of(notebook)][0]


def is_instructor() -> bool:
    return os.environ.get(INSTRUCTOR_VARIABLE) == "1"


def reveal(notebook) -> None:
    """Print the notebook's open question and, for an instructor, its model answer."""
    text, answer = ANSWERS[key_of(notebook)]
    print(textwrap.fill(f"Question: {text}", 100))
    print()
    if is_instructor():
        print(textwrap.fill(f"A model answer: {answer}", 100))
    else:
        print("The model answer is for your instructor: write yours in the cell above, and compare it with the "
              "answer discussed in class.")
