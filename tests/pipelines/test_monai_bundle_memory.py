"""A 105-channel MONAI bundle's output never sits at source resolution on all channels at once.

The bundle is the real ``wholeBody_ct_segmentation`` configuration in its own low-resolution mode
(``displayable_configs.highres = false``: 3 mm) with a cheap 105-channel network in place of its
SegResNet (the network's size is not what is measured). On a 96 x 256² CT the float32
probabilities of its 104 labels at source resolution would take 2.6 GB; the node's run of the
whole pipeline must stay far below that above the peak of the bundle's own inferer, as a user
watching the node's memory would notice. Parity of the bounded path with MONAI's own pipeline is checked on the real
SegResNet in ``test_monai_bundle_wholebody.py``.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.contract import SourceSeries, StudyInput
from tests.memory import rss_peak
from tests.pipelines.bundles import CHEAP_105_UNET, low_resolution, write_bundle

pytestmark = pytest.mark.slow

NAME = "wholeBody_ct_segmentation"
SHAPE = (96, 256, 256)
CHEAP_NETWORK = {"_target_": "UNet", **CHEAP_105_UNET}


def write_cheap_wholebody(root: Path) -> None:
    """``root/wholebody`` with the card, the bundle (low-resolution mode, cheap network, seeded
    random weights) and nothing else."""
    card = {"version": "0.2.5", "device_uid": "2.25.99017"}
    write_bundle(root, "wholebody", NAME, card, edit_config=low_resolution(CHEAP_NETWORK))


def _node_over_bare(models_dir: str, series: SourceSeries) -> tuple[float, str, int]:
    """In a fresh process: (RSS peak of the node's run minus that of the bundle's own inferer on
    its pre-processed image, in MB; label map dtype; labels in the label map)."""
    from models.registry import ModelRegistry
    from pipelines.pipeline import Pipeline
    from pipelines.preprocess.decode import decode_series
    from pipelines.preprocess.orientation import series_as_metatensor
    from tests.pipelines.test_pipeline import config

    torch.set_num_threads(1)
    task = {"members": [{"model": "wholebody", "device": "cpu"}]}
    pipeline = Pipeline(config(3, {"segmentation": task}, ["CT"]), ModelRegistry(Path(models_dir)))
    bundle = pipeline.members().segmentation[0].model.bundle  # type: ignore[attr-defined]
    image = bundle.preprocessing({"image": series_as_metatensor(decode_series(series))})["image"]

    def bare() -> None:
        with torch.no_grad():
            bundle.inferer(image[None], bundle.network)

    with rss_peak() as bare_rss:
        bare()
    with rss_peak() as node_rss:
        result = pipeline.run(StudyInput(study_instance_uid="1.2.3", series=(series,)))
    assert result.segmentation is not None
    label_map = result.segmentation.label_map
    return node_rss.peak_mb - bare_rss.peak_mb, str(label_map.dtype), int(np.unique(label_map).size)


def test_105_channel_bundle_never_holds_all_channels_at_source_resolution(
    tmp_path: Path,
) -> None:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_3d_phantom
    from tests.pipelines.test_pipeline import config  # noqa: F401 - importable in the child

    write_cheap_wholebody(tmp_path / "models")
    paths = write_series(
        make_3d_phantom(np.random.default_rng(0), shape=SHAPE, lesion_count=1), tmp_path / "ct"
    )
    import pydicom

    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series = SourceSeries(str(ds.SeriesInstanceUID), "CT", str(ds.SOPClassUID), tuple(paths))
    all_channels_mb = 104 * np.prod(SHAPE) * 4 / 2**20  # 2.6 GB
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        over_mb, dtype, present = pool.apply(_node_over_bare, (str(tmp_path / "models"), series))
    print(
        f"105-channel bundle: node peak {over_mb:.0f} MB over the bare inferer's, {present} labels"
    )
    assert dtype == "uint8"
    assert present > 1  # a real answer, not an empty map
    # beyond what the bundle's own inferer needs: the decoded series, the softmax at the 3 mm
    # grid, a label map and a heat map, a few hundred MB; a quarter of all channels at source
    # resolution would already exceed it
    assert over_mb < all_channels_mb / 4, over_mb
