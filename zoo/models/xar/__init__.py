"""Family xar: next-X prediction with flow matching and Noisy Context Learning (Ren et al., 2025)."""

from zoo.models.xar.convert import convert_xar
from zoo.models.xar.data import XARDataModule
from zoo.models.xar.module import XARAutoencoderModule, XARModule
from zoo.registry import ModelEntry, Paper, UpstreamCheckpoint, register, register_datamodule

PAPER = Paper(
    title="Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation",
    arxiv="2502.20388",
    authors="Sucheng Ren, Qihang Yu, Ju He, Xiaohui Shen, Alan Yuille, Liang-Chieh Chen",
    venue="ICCV 2025",
    code_url="https://github.com/OliverRensu/xAR",
    bibtex="""@inproceedings{ren2025xar,
  title={Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation},
  author={Ren, Sucheng and Yu, Qihang and He, Ju and Shen, Xiaohui and Yuille, Alan and Chen, Liang-Chieh},
  booktitle={ICCV},
  year={2025}
}""",
)

# digits: 8x8 images, 2x2 patches -> 4x4 token grid, 2x2 cells -> 4 AR steps
TINY = dict(image_size=8, channels=1, num_classes=10, latent="patch", patch_size=2, entity="cell", entity_size=2,
            dim=64, encoder_depth=2, decoder_depth=2, num_heads=4, ema_decay=0.999, sample_steps=20, cfg_scale=2.0)
# ImageNet-256 with MAR's KL-16 latents (16x16x16), 8x8 cells -> 4 AR steps
PAPER_SIZES = {
    "b": dict(dim=768, encoder_depth=8, decoder_depth=8, num_heads=12, sample_steps=40, cfg_scale=2.7),
    "l": dict(dim=1024, encoder_depth=16, decoder_depth=16, num_heads=16, sample_steps=50, cfg_scale=2.3),
    "h": dict(dim=1280, encoder_depth=20, decoder_depth=20, num_heads=16, sample_steps=50, cfg_scale=2.2),
}
IMAGENET = dict(image_size=256, channels=3, num_classes=1000, latent="kl", patch_size=1, latent_scale=0.2325,
                entity="cell", entity_size=8, ema_decay=0.9999, dropout=0.1, lr_hold=0.75,
                autoencoder={"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                             "z_channels": 16, "in_channels": 3, "resolution": 256, "num_groups": 32})

# One Hub repo holds B, L and H; the registry maps a repo id to one model, so it converts xAR-B.
# xAR-L / xAR-H convert with convert_xar(folder) from a folder holding xAR-L.pth / xAR-H.pth.
# The revision could not be resolved offline: "main" until a commit hash is pinned.
UPSTREAM = (UpstreamCheckpoint(
    repo_id="OliverRen/xAR", revision="main", model="xar-b", converter=convert_xar, files=("xAR-B.pth",),
    optional_files=("kl16.ckpt",), license="mit",
    description="xAR-B (ImageNet 256, FID 1.72); MAR's kl16.ckpt is not in this repo: copy it into the folder",
),)

register(ModelEntry(
    name="xar-tiny", family="xar", variant="tiny", module_class=XARModule, datamodule_class=XARDataModule,
    config=TINY, paper=PAPER, license="mit", tags=("vision", "image-generation", "autoregressive", "flow-matching"),
    description="tiny xAR on 8x8 digits in patch space (2x2 cells, 4 AR steps)", default=True,
    config_file="configs/xar/tiny.yaml",
))
for _size, _cfg in PAPER_SIZES.items():
    register(ModelEntry(
        name=f"xar-{_size}", family="xar", variant=_size, module_class=XARModule, datamodule_class=XARDataModule,
        config={**IMAGENET, **_cfg}, paper=PAPER, license="mit",
        tags=("vision", "image-generation", "autoregressive", "flow-matching"),
        description=f"xAR-{_size.upper()} for ImageNet 256x256 on MAR KL-16 latents",
        config_file="configs/xar/paper-b.yaml" if _size == "b" else None,
        upstream=UPSTREAM if _size == "b" else (),
    ))
register(ModelEntry(
    name="xar-autoencoder-tiny", family="xar", variant="autoencoder-tiny", module_class=XARAutoencoderModule,
    datamodule_class=XARDataModule, config={"autoencoder": {"ch": 32, "ch_mult": [1, 2], "z_channels": 4}},
    paper=PAPER, license="mit", tags=("vision", "autoencoder"),
    description="KL autoencoder for 8x8 digits (latent 4x4x4), for xar latent='kl'",
    config_file="configs/xar/tiny-autoencoder.yaml",
))
register_datamodule("xar_images", XARDataModule)

__all__ = ["PAPER", "XARAutoencoderModule", "XARDataModule", "XARModule", "convert_xar"]
