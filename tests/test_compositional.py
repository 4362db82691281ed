from collections import Counter
from pathlib import Path

import clip
import numpy as np
import pandas as pd
import pytest
import torch

from clip_helpers import binding as bind
from clip_helpers import compositional as comp
from clip_helpers.models import build_random_clip, preprocess_for
from clip_helpers.shapes import (COLOUR_SYNONYMS, HELD_OUT, SHAPE_SYNONYMS, SHAPES_NEW_WORD_TEMPLATES,
                                 SHAPES_RECOMBINED_TEMPLATES, SHAPES_TEMPLATES, ShapesDataset, crop_boxes, draw_scene)
from clip_helpers.training.recipes import SMOKE_RECIPE
from clip_helpers.text import fill

# ---------------------------------------------------------------- prompts the model never saw


def test_test_templates_are_disjoint_from_the_training_templates():
    test_templates = SHAPES_RECOMBINED_TEMPLATES + SHAPES_NEW_WORD_TEMPLATES
    assert not set(test_templates) & set(SHAPES_TEMPLATES)
    # and not the same prompt up to case or spacing, which the tokenizer would erase
    assert not {" ".join(t.lower().split()) for t in test_templates} & {" ".join(t.lower().split()) for t in SHAPES_TEMPLATES}


def test_recombined_templates_use_only_training_tokens_and_new_word_templates_bring_new_ones():
    names = comp.class_names_for()
    assert comp.unseen_tokens([fill(t, n) for t in SHAPES_RECOMBINED_TEMPLATES for n in names]) == []
    for template in SHAPES_NEW_WORD_TEMPLATES:
        assert comp.unseen_tokens([fill(template, n) for n in names]), template


def test_every_synonym_is_made_of_tokens_no_training_caption_holds():
    training = comp.tokens_of(comp.training_texts())
    for synonym in list(COLOUR_SYNONYMS.values()) + list(SHAPE_SYNONYMS.values()):
        assert not comp.tokens_of([synonym]) & training, synonym
    assert len(comp.tokens_of(["quadrilateral"])) > 1  # split into several BPE tokens


def test_class_name_sets_follow_the_dataset_order():
    assert comp.class_names_for() == ShapesDataset("all", n_per_class=1).classes
    assert comp.class_names_for(shape_first=True)[1] == "square red"
    assert comp.class_names_for(COLOUR_SYNONYMS, SHAPE_SYNONYMS)[0] == "crimson disc"
    assert all(len(set(names)) == 36 for names in comp.CLASS_NAME_SETS.values())


def test_untrained_token_embeddings_do_not_move_in_training(mini):
    """Why synonyms test nothing learned: a token in no caption gets no gradient, so AdamW leaves it as it was."""
    from clip_helpers.training.batches import train_loader_for
    from clip_helpers.training.config import TrainConfig
    from clip_helpers.training.loop import fine_tune
    import copy
    model = copy.deepcopy(mini)
    images = torch.randn(8, 3, 32, 32)
    labels = torch.arange(8) % 4
    dataset = torch.utils.data.TensorDataset(images, labels)
    crimson = clip.tokenize(["crimson"])[0, 1].item()
    red = clip.tokenize(["red"])[0, 1].item()
    before = model.token_embedding.weight.detach().clone()
    config = TrainConfig(class_names=comp.class_names_for()[:4], templates=["a {}."], num_epochs=1, lr=1e-2,
                         weight_decay=0.1, amp=None, progress=False)
    fine_tune(model, train_loader_for(dataset, 4), torch.utils.data.DataLoader(dataset, batch_size=8), config)
    after = model.token_embedding.weight.detach()
    assert torch.equal(after[crimson], before[crimson])
    assert not torch.equal(after[red], before[red])


def test_prompt_table_scores_each_pair_of_sets_as_zeroshot_would(mini):
    dataset = ShapesDataset("all", n_per_class=1, transform=preprocess_for(32))
    images, labels = map(torch.stack, zip(*[(image, torch.tensor(label)) for image, label in dataset]))
    image_features = mini.encode_image(images).detach()
    table = comp.prompt_table(mini, image_features, labels)
    assert len(table) == len(comp.TEMPLATE_SETS) * len(comp.CLASS_NAME_SETS)
    row = table.set_index(["templates", "class names"]).loc[("new words", "colour synonyms")]
    # by hand: average of normalised prompt features per class, argmax of cosine, compared with labels
    names = comp.CLASS_NAME_SETS["colour synonyms"]
    with torch.no_grad():
        text = mini.encode_text(clip.tokenize([fill(t, n) for n in names for t in SHAPES_NEW_WORD_TEMPLATES],
                                              context_length=mini.context_length))
    text = text / text.norm(dim=-1, keepdim=True)
    classifier = text.reshape(36, len(SHAPES_NEW_WORD_TEMPLATES), -1).mean(dim=1)
    expected = 100 * ((image_features @ classifier.T).argmax(dim=1) == labels).float().mean().item()
    assert row["top1"] == pytest.approx(expected)
    assert "crimson</w>" in row["unseen tokens"].split()
    assert table.set_index(["templates", "class names"]).loc[("training templates", "training names"), "n unseen tokens"] == 0
    with pytest.raises(ValueError, match="one name per class"):
        comp.prompt_table(mini, image_features, labels, class_name_sets={"short": ["red circle", "red square"]})


# ---------------------------------------------------------------- attribute binding

def test_swapped_sentence_swaps_the_colours_between_the_shapes():
    for objects in bind.binding_pairs(50, seed=3):
        (c1, s1), (c2, s2) = objects
        assert c1 != c2 and s1 != s2
        swapped = bind.swap_colours(objects)
        assert swapped == [(c2, s1), (c1, s2)]
        true, other = bind.sentence(objects), bind.sentence(swapped)
        assert true != other and Counter(true.split()) == Counter(other.split())  # the same words
        assert true == f"{fill('a {}', f'{c1} {s1}')} and {fill('a {}', f'{c2} {s2}')}."  # "an orange ..."
        assert not set(objects + swapped) & set(HELD_OUT)


def test_binding_pairs_can_include_held_out_pairs_when_asked():
    pairs = bind.binding_pairs(200, seed=0, include_heldout=True)
    assert any(set(p + bind.swap_colours(p)) & set(HELD_OUT) for p in pairs)


def test_binding_credit_by_hand_on_known_features():
    """A stub's features: the score is a plain comparison of cosines, so known vectors give known credits."""
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    true = torch.tensor([[0.8, 0.6], [0.8, 0.6], [1.0, 0.0]])
    swapped = torch.tensor([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]])
    credit = bind.binding_credit((image * true).sum(1), (image * swapped).sum(1))
    # cosines: 0.8 vs 0.6 (true wins), 0.6 vs 0.8 (swapped wins), 0.6 vs 0.6 (tie: an order-blind text tower)
    assert credit.tolist() == [1.0, 0.0, 0.5]


def test_binding_summary_is_the_mean_credit_with_its_standard_error():
    table = pd.DataFrame({"scene credit": [1.0, 0.0, 0.5, 1.0], "crop credit": [1.0, 1.0, 1.0, 0.0],
                          "crops right": [True, False, False, False], "scene names an object": [True] * 4})
    summary = bind.binding_summary(table)
    scene = summary.loc["whole scene, true vs swapped sentence"]
    assert scene["accuracy (%)"] == pytest.approx(62.5)
    assert scene["standard error (%)"] == pytest.approx(100 * np.std([1, 0, 0.5, 1], ddof=1) / 2)
    assert summary.loc["crops, true vs swapped assignment", "accuracy (%)"] == pytest.approx(75)
    assert summary.loc["crops, both classified right (36-way)", "accuracy (%)"] == pytest.approx(25)
    assert (summary["chance (%)"].iloc[:2] == 50).all()
    assert scene["ties"] == 1 and summary.loc["crops, true vs swapped assignment", "ties"] == 0


def test_binding_test_matches_clips_own_forward(mini):
    preprocess = preprocess_for(32)
    table = bind.binding_test(mini, preprocess, n_scenes=3, seed=5)
    assert len(table) == 3
    objects = bind.binding_pairs(3, seed=5)[1]
    scene, placed = draw_scene(size=64, object_size=32, seed=5 * 100_003 + 1, objects=objects)
    assert [(c, s) for c, s, _ in placed] == objects
    crops = crop_boxes(scene, [box for _, _, box in placed], size=32)
    swapped = bind.swap_colours(objects)
    with torch.no_grad():
        images = mini.encode_image(torch.stack([preprocess(image) for image in [scene] + crops]))
        texts = mini.encode_text(clip.tokenize([bind.sentence(objects), bind.sentence(swapped)]
                                               + [f"a {c} {s}." for c, s in objects + swapped], context_length=16))
    cos = torch.nn.functional.cosine_similarity(images[:, None], texts[None], dim=-1)
    row = table.iloc[1]
    assert row["true sentence"] == bind.sentence(objects)
    assert row["scene cos true"] == pytest.approx(cos[0, 0].item(), abs=1e-5)
    assert row["scene cos swapped"] == pytest.approx(cos[0, 1].item(), abs=1e-5)
    assert row["crop score true"] == pytest.approx((cos[1, 2] + cos[2, 3]).item(), abs=1e-5)
    assert row["crop score swapped"] == pytest.approx((cos[1, 4] + cos[2, 5]).item(), abs=1e-5)
    assert row["scene credit"] == float(cos[0, 0] > cos[0, 1])
    from clip_helpers import zeroshot
    classifier = zeroshot.build_classifier(mini, comp.class_names_for(), SHAPES_TEMPLATES)
    scene_class = comp.class_names_for()[int((images[0] @ classifier.T).argmax())]
    assert row["scene names an object"] == (scene_class in [f"{c} {s}" for c, s in objects])
    assert set(bind.binding_summary(table).index) == {"whole scene, true vs swapped sentence",
                                                     "crops, true vs swapped assignment",
                                                     "crops, both classified right (36-way)",
                                                     "whole scene, 36-way class is one of its objects"}


# ---------------------------------------------------------------- held-out pairs over seeds

def test_baselines_are_what_a_simulated_predictor_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(36, size=60_000)
    stated = comp.baselines()
    assert stated["chance"] == pytest.approx(100 / 36)
    for keep, name in (("colour", "right colour, random shape"), ("shape", "right shape, random colour")):
        predicted = comp.attribute_baseline_predictions(labels, keep, rng)
        names = [comp.class_names_for()[k].split() for k in predicted]
        truth = [comp.class_names_for()[k].split() for k in labels]
        index = 0 if keep == "colour" else 1
        assert all(p[index] == t[index] for p, t in zip(names, truth))  # the kept attribute is always right
        assert 100 * np.mean(predicted == labels) == pytest.approx(stated[name], abs=0.6)  # 1/6 = 16.7%
    assert stated["right colour, random shape"] == pytest.approx(100 / 6)
    with pytest.raises(ValueError, match="colour"):
        comp.attribute_baseline_predictions(labels, "size", rng)


@pytest.mark.parametrize("true, predicted, expected", [
    ("red circle", "red circle", "right"), ("red circle", "red star", "kept the colour"),
    ("red circle", "blue circle", "kept the shape"), ("red circle", "blue star", "neither")])
def test_outcome(true, predicted, expected):
    assert comp.outcome(true, predicted) == expected


def synthetic_predictions(seed=0):
    rng = np.random.default_rng(seed)
    names = comp.class_names_for()
    rows = []
    for model_seed in (0, 1, 2):
        for colour, shape in HELD_OUT:
            for image in range(7):
                predicted = names[rng.integers(36)] if rng.random() < 0.7 else f"{colour} {shape}"
                rows.append({"seed": model_seed, "image": image, "pair": f"{colour} {shape}", "predicted": predicted,
                             "outcome": comp.outcome(f"{colour} {shape}", predicted)})
    table = pd.DataFrame(rows)
    table["correct"] = table["outcome"] == "right"
    return table


def test_per_pair_summary_against_a_direct_groupby():
    predictions = synthetic_predictions()
    summary = comp.per_pair_summary(predictions)
    per_seed = 100 * predictions.groupby(["pair", "seed"])["correct"].mean()
    direct = per_seed.groupby(level="pair").agg(["mean", "std", "min", "max"])
    for pair in direct.index:
        for ours, theirs in (("mean top1", "mean"), ("std", "std"), ("min", "min"), ("max", "max")):
            assert summary.loc[pair, ours] == pytest.approx(direct.loc[pair, theirs])
    overall = 100 * predictions.groupby("seed")["correct"].mean()
    assert summary.loc["all held-out pairs", "mean top1"] == pytest.approx(overall.mean())
    assert summary.loc["all held-out pairs", "std"] == pytest.approx(overall.std())
    assert (summary["n seeds"] == 3).all() and summary.loc["red circle", "images per seed"] == 7
    assert summary["chance"].tolist() == pytest.approx([100 / 36] * len(summary))


def test_failure_breakdown_counts_each_outcome():
    predictions = synthetic_predictions(1)
    breakdown = comp.failure_breakdown(predictions)
    for seed in (0, 1, 2):
        rows = predictions[predictions["seed"] == seed]
        kept_colour = sum(t.split()[0] == p.split()[0] and t != p for t, p in zip(rows["pair"], rows["predicted"]))
        assert breakdown.loc[seed, ("images", "kept the colour")] == kept_colour
        assert breakdown.loc[seed, ("images", "right")] == rows["correct"].sum()
    assert breakdown.loc["all seeds", "images"].sum() == len(predictions)
    assert breakdown.loc["all seeds", "% of images"].sum() == pytest.approx(100)


def test_heldout_predictions_match_zeroshot_predict_and_refuse_too_few_seeds():
    from clip_helpers import zeroshot
    models = {seed: build_random_clip("mini", seed=seed) for seed in (0, 1, 2)}
    preprocess = preprocess_for(32)
    table = comp.heldout_predictions(models, preprocess, n_per_class=2, test_seed=7)
    assert len(table) == 3 * 6 * 2 and set(table["pair"]) == {f"{c} {s}" for c, s in HELD_OUT}
    dataset = ShapesDataset("heldout", n_per_class=2, seed=7, transform=preprocess)
    images = torch.stack([image for image, _ in dataset])
    classifier = zeroshot.build_classifier(models[1], dataset.classes, SHAPES_TEMPLATES)
    expected = [dataset.classes[k] for k in zeroshot.predict(models[1], images, classifier).argmax(dim=1).tolist()]
    assert table[table["seed"] == 1]["predicted"].tolist() == expected
    with pytest.raises(ValueError, match="at least 3"):
        comp.heldout_predictions({0: models[0], 1: models[1]}, preprocess)


@pytest.mark.slow
def test_train_seeds_caches_one_model_per_seed(tmp_path: Path):
    models = comp.train_seeds([0, 1], SMOKE_RECIPE, cache_dir=tmp_path)
    finals = [path for path in tmp_path.glob("mini-clip-shapes-*.pt") if not path.stem.endswith("-epoch1")]
    assert len(finals) == 2  # one trained model per seed (each also keeps its epoch-1 weights beside it)
    assert not torch.equal(models[0].token_embedding.weight, models[1].token_embedding.weight)
    again = comp.train_seeds([1], SMOKE_RECIPE, cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again[1].state_dict().values(), models[1].state_dict().values()))


@pytest.mark.slow
def test_seeds_trained_in_processes_equal_those_trained_here_on_one_thread(tmp_path: Path):
    """train_seeds' processes (one thread each) must train what this process trains with one thread: the same
    recipe, seed and cache file, only elsewhere."""
    parallel = comp.train_seeds([0, 1], SMOKE_RECIPE, cache_dir=tmp_path / "parallel", processes=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = comp.train_seeds([0, 1], SMOKE_RECIPE, cache_dir=tmp_path / "here", processes=1)
    finally:
        torch.set_num_threads(threads)
    for seed in (0, 1):
        for name, tensor in here[seed].state_dict().items():
            torch.testing.assert_close(parallel[seed].state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_course_seeds_start_with_the_recipes_own_model_so_notebooks_share_one_cache():
    from clip_helpers.training.recipes import MINI_RECIPE, mini_clip_path

    seeds = comp.course_seeds({**MINI_RECIPE, "seed": 5})
    assert seeds == [5, 6, 7]
    # the first seed's model is the one every other notebook loads (the same cache file), so 07 and 08 train
    # only the others, once
    first = comp.course_seeds(MINI_RECIPE)[0]
    assert mini_clip_path({**MINI_RECIPE, "seed": first}) == mini_clip_path(MINI_RECIPE)
