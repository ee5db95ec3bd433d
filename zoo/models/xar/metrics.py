"""Sample-quality metrics for digits: feature-space Frechet distance, class accuracy, k-NN precision/recall.

Inception FID needs weights we cannot download, so the features come from a small frozen digit
classifier shipped in ``zoo/datasets/xar/digit_classifier.safetensors`` (trained on the training
split of scikit-learn digits by ``python -m zoo.models.xar.metrics``). The resulting
"feature-space FD" is NOT comparable with Inception FID numbers; compare arms measured with it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from zoo.errors import CheckpointFormatError

CLASSIFIER_FILE = Path(__file__).resolve().parents[2] / "datasets" / "xar" / "digit_classifier.safetensors"


class DigitClassifier(nn.Module):
    """A small CNN on 1x8x8 images in [-1, 1]; its 128-d penultimate layer is the FD feature space."""

    num_features = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(64 * 16, self.num_features), nn.GELU())
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class ClassifierFeatures(nn.Module):
    """``feature=`` module for torchmetrics' FID: images in [-1, 1] -> penultimate features."""

    num_features = DigitClassifier.num_features

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float())


def load_digit_classifier(path: str | Path = CLASSIFIER_FILE) -> DigitClassifier:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"digit classifier weights {path} are missing; rebuild them with "
                                    "`python -m zoo.models.xar.metrics` (trains on the digits training split)")
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


class KNNPrecisionRecall(Metric):
    """Improved precision/recall (Kynkaanniemi et al., 2019) with k-NN radii in feature space."""

    full_state_update = False

    def __init__(self, k: int = 3):
        super().__init__()
        self.k = k
        self.add_state("real", default=[], dist_reduce_fx="cat")
        self.add_state("fake", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real if real else self.fake).append(features.double())

    @staticmethod
    def _coverage(support: Tensor, queries: Tensor, k: int) -> Tensor:
        radii = torch.cdist(support, support).kthvalue(k + 1, dim=1).values  # +1 skips the point itself
        return (torch.cdist(queries, support) <= radii[None]).any(dim=1).double().mean()

    def compute(self) -> dict[str, Tensor]:
        real, fake = torch.cat(self.real), torch.cat(self.fake)
        return {"precision": self._coverage(real, fake, self.k), "recall": self._coverage(fake, real, self.k)}


class SampleQuality:
    """Scores generated digits against real ones in the frozen classifier's feature space."""

    def __init__(self, real_images: Tensor, classifier: DigitClassifier | None = None, k: int = 3):
        self.classifier = classifier or load_digit_classifier()
        self.fd = FrechetInceptionDistance(feature=ClassifierFeatures(self.classifier), reset_real_features=False)
        self.k = k
        with torch.no_grad():
            for chunk in real_images.split(512):
                self.fd.update(chunk, real=True)
            self.real_features = self.classifier.features(real_images)

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        self.fd.reset()  # keeps the real statistics (reset_real_features=False)
        pr_metric = KNNPrecisionRecall(self.k)
        pr_metric.update(self.real_features, real=True)
        correct = 0
        for chunk, y in zip(images.split(512), labels.split(512)):
            self.fd.update(chunk, real=False)
            pr_metric.update(self.classifier.features(chunk), real=False)
            correct += (self.classifier(chunk).argmax(-1) == y).sum().item()
        pr = pr_metric.compute()
        return {"feature_fd": float(self.fd.compute()), "class_accuracy": correct / len(images),
                "precision": float(pr["precision"]), "recall": float(pr["recall"]), "num_samples": len(images)}


def train_digit_classifier(seed: int = 0, epochs: int = 40) -> tuple[DigitClassifier, float]:
    """Fit the classifier on the digits training split (the same leak-free split as XARDataModule)."""
    from zoo.models.xar.data import XARDataModule

    torch.manual_seed(seed)
    dm = XARDataModule(batch_size=64, seed=0)
    dm.setup()
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    for _ in range(epochs):
        model.train()
        for batch in dm.train_dataloader():
            # small shifts make the features robust to generator artefacts, not just memorised pixels
            shift = torch.randint(-1, 2, (2,)).tolist()
            images = torch.roll(batch["images"], shifts=shift, dims=(2, 3)) if torch.rand(()) < 0.3 else batch["images"]
            loss = F.cross_entropy(model(images), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            correct += (model(batch["images"]).argmax(-1) == batch["labels"]).sum().item()
            total += len(batch["labels"])
    return model, correct / total


if __name__ == "__main__":
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    classifier, accuracy = train_digit_classifier()
    CLASSIFIER_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(CLASSIFIER_FILE),
              metadata={"test_accuracy": f"{accuracy:.4f}", "data": "scikit-learn digits, XARDataModule seed 0 train"})
    print(f"saved {CLASSIFIER_FILE} (test accuracy {accuracy:.4f})")
