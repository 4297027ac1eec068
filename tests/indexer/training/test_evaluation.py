"""Retrieval metrics by hand, the ablation's rows, and `diffsearch eval` on a labelled tree of the sample photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.embedding.config import EmbeddingConfig
from indexer.images import prepare
from indexer.training.evaluation import AS_INDEXED_ROW, BASELINE, DEFAULT_ROW, LATENT_GRID_ROW, _Crops, ablation, retrieval_metrics
from tests.cli import run_cli
from tests.conftest import make_photo

ROOT = Path(__file__).resolve().parents[3]


def test_retrieval_metrics_match_a_hand_computed_example():
    # Points on a line: 0.0 (a), 1.0 (a), 1.5 (b), 3.0 (b). Each query ranks the other three by distance.
    vectors = np.array([[0.0], [1.0], [1.5], [3.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    m = retrieval_metrics(vectors, labels, ks=(1, 2))
    # Rankings: q0: 1(a) 2(b) 3(b); q1: 2(b) 0(a) 3(b); q2: 1(a) 0(a) 3(b); q3: 2(b) 1(a) 0(a)
    assert m["P@1"] == pytest.approx(2 / 4)
    assert m["P@2"] == pytest.approx((1 + 1 + 0 + 1) / 8)
    assert m["R@1"] == pytest.approx(2 / 4) and m["R@2"] == pytest.approx(3 / 4)
    assert m["mAP"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)  # one relevant photo per query


def test_mirrored_queries_rank_each_photo_at_the_nearer_of_two_distances():
    # Same points; each query's mirror sits at -x. q3 (3.0) mirrored is -3.0: nothing nearer than before.
    vectors = np.array([[0.0], [1.0], [1.5], [3.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    mirrored = np.array([[0.0], [-1.0], [-1.5], [-3.0]], dtype=np.float32)
    assert retrieval_metrics(vectors, labels, ks=(1, 2), mirrored=mirrored) == retrieval_metrics(vectors, labels, ks=(1, 2))
    # q2 (1.5, b) ranked 1(a) first; its mirror at 2.9 is 0.1 from photo 3 (b), which now comes first.
    mirrored = np.array([[0.0], [-1.0], [2.9], [-3.0]], dtype=np.float32)
    m = retrieval_metrics(vectors, labels, ks=(1,), mirrored=mirrored)
    assert m["P@1"] == pytest.approx((1 + 0 + 1 + 1) / 4)
    # Counted only within mirror_within: 0.1 is inside 0.2, not inside 0.05.
    assert retrieval_metrics(vectors, labels, ks=(1,), mirrored=mirrored, mirror_within=0.2)["P@1"] == pytest.approx(3 / 4)
    assert retrieval_metrics(vectors, labels, ks=(1,), mirrored=mirrored, mirror_within=0.05)["P@1"] == pytest.approx(2 / 4)


def test_ablation_rows_put_the_chosen_config_last(default_model):
    fused = EmbeddingConfig(blocks=("latent", "mid"))
    rows = ablation(fused, default_model, with_256=False)
    names = [r.name for r in rows]
    assert names[1] == BASELINE and names[-2:] == [DEFAULT_ROW, AS_INDEXED_ROW] and "trained U-Net features only" in names
    assert rows[1].config.blocks == ("latent",) and rows[-2].config == fused and rows[-1].as_indexed
    random_row = next(r for r in rows if r.name.startswith("random-init"))
    assert random_row.model.fingerprint.startswith("random-init-") and random_row.config == fused

    unet_only = EmbeddingConfig(blocks=("mid",), grid=4, gap=True)
    rows = ablation(unet_only, default_model, with_256=True, stage_one=default_model)
    names = [r.name for r in rows]
    assert "trained U-Net + latent" in names and any("stage 1" in n for n in names) and any("256px" in n for n in names)
    grid_row = next(r for r in rows if r.name == LATENT_GRID_ROW)  # the latent also gets its own best pooling
    assert grid_row.config.blocks == ("latent",) and not grid_row.config.gap


@pytest.mark.slow
def test_eval_cli_on_a_labelled_tree(tmp_path, sample_photos):
    tree = tmp_path / "labelled"
    for photo in sample_photos:  # names are <class>_image_NNNN.jpg
        folder = tree / photo.name.rsplit("_image_", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).symlink_to(photo)  # a tree of links, as labelled sets are often laid out
    out = tmp_path / "eval.json"
    evaluate = lambda root, cwd: run_cli("eval", "--root", root, "--out", str(out), "--cache", str(tmp_path / "cache"), cwd=cwd)  # noqa: E731
    run = evaluate(str(tree), ROOT)
    assert run.returncode == 0, run.stderr
    assert AS_INDEXED_ROW in run.stdout
    assert "64 queries, 8 classes" in run.stdout and "without PCA-whitening" in run.stdout
    results = {r["name"]: r["metrics"] for r in json.loads(out.read_text())}
    assert set(results) >= {"colour histogram 8x8x8", BASELINE, DEFAULT_ROW}
    assert all(0.0 <= m["P@10"] <= 0.7 for m in results.values())  # 8 photos a class: at most 7 of 10 relevant
    assert results[BASELINE]["mAP"] > results["colour histogram 8x8x8"]["mAP"]  # the autoencoder sees more than colour
    again = evaluate("labelled", tmp_path)  # relative --root: the same photos, so the same cache entry
    assert again.returncode == 0 and "encoding 64 photos" not in again.stderr, again.stderr[-500:]
    empty = evaluate(str(tmp_path / "cache"), ROOT)
    assert empty.returncode == 2 and "no photos under" in empty.stderr and "Traceback" not in empty.stderr


def test_random_unet_row_never_shares_the_trained_models_compiled_graphs(default_model, sample_photos):
    """A random-init model made from the trained one must not be served the trained one's OpenVINO
    graphs, nor serve its own to it (they once shared the memo and the bench's rows came out equal)."""
    from indexer.embedding.config import RuntimeOptions
    from indexer.embedding.embedder import Embedder
    from indexer.embedding.model import load_model
    from indexer.training.evaluation import random_unet_model

    trained = load_model("default")  # its own memo, not the session fixture's
    # The session's graph cache (default place), which already holds the trained model's graphs:
    # the random model must not be served them from the disk either.
    options = RuntimeOptions(device="cpu", runtime="openvino", dtype="float32")
    photos = sample_photos[:4]
    before = Embedder(EmbeddingConfig(projection=False), options, model=trained).embed(photos)
    random = random_unet_model(trained)
    assert random.fingerprint != trained.fingerprint and random.compiled is not trained.compiled
    random_vectors = Embedder(EmbeddingConfig(projection=False), options, model=random).embed(photos)
    torch_random = Embedder(EmbeddingConfig(projection=False), RuntimeOptions(device="cpu", runtime="torch", dtype="float32"), model=random)
    assert np.abs(random_vectors - torch_random.embed(photos)).max() < 1e-3  # its own weights ran
    after = Embedder(EmbeddingConfig(projection=False), options, model=trained).embed(photos)
    assert np.abs(after - before).max() < 1e-5
    assert np.abs(random_vectors - before).max() > 0.1
    assert random_unet_model(trained).fingerprint == random.fingerprint  # seeded: the same weights again


def test_cached_latents_are_reused_only_by_the_same_encode_path(default_model, sample_photos, tmp_path, monkeypatch):
    import torch
    from PIL import ImageOps

    from indexer.embedding.embedder import Embedder
    from indexer.images import crop_for_embedding, load_image, to_tensor
    from indexer.training import evaluation

    photos = sample_photos[:3]
    first = evaluation.encode_set(default_model, photos, 128, tmp_path, workers=0)
    assert len(list(tmp_path.glob("encoded-*.pt"))) == 1
    again = evaluation.encode_set(default_model, photos, 128, tmp_path, workers=0)
    assert torch.equal(first.x0, again.x0) and len(list(tmp_path.glob("encoded-*.pt"))) == 1
    # The mirrored set is its own entry, and is the mirror cropped as the searcher crops it.
    mirrored = evaluation.encode_set(default_model, photos, 128, tmp_path, workers=0, mirror=True)
    assert len(list(tmp_path.glob("encoded-*.pt"))) == 2
    embedder = Embedder(EmbeddingConfig(blocks=("latent",), projection=False), model=default_model)
    expected = embedder.encode(to_tensor([crop_for_embedding(ImageOps.mirror(load_image(p)[0]), 128) for p in photos]))
    assert torch.allclose(mirrored.x0, expected.half().float(), atol=1e-3)
    # An encode path that gives other latents (here: the same with a different probe result) misses.
    monkeypatch.setattr(evaluation, "encode_probe", lambda embedder, size: "another encode path")
    evaluation.encode_set(default_model, photos, 128, tmp_path, workers=0)
    assert len(list(tmp_path.glob("encoded-*.pt"))) == 3


def test_eval_reads_each_photo_as_the_index_does(tmp_path):
    """`diffsearch eval` must measure the vectors `index` stores: a phone's HEIC decodes from its
    embedded thumbnail there, and so here (it decoded in full, the JPEG setting alone, before)."""
    photo = Image.open(make_photo(tmp_path / "p.png", 6, size=(160, 120))).resize((1600, 1200), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "phone.heic", quality=90, thumbnails=[320], enc_params={"preset": "ultrafast"})
    config = EmbeddingConfig()
    evaluated = _Crops([tmp_path / "phone.heic"], config.image_size, config.trims, decode=config.decode_options)[0]
    indexed = prepare(tmp_path / "phone.heic", config.image_size, config.trims, decode=config.decode_options)
    in_full = prepare(tmp_path / "phone.heic", config.image_size, config.trims)
    assert np.array_equal(evaluated.numpy(), indexed.numpy())
    assert not np.array_equal(in_full.numpy(), indexed.numpy())  # the thumbnail was used
