"""Training methods: how one batch becomes a loss. Adversarial examples come from ART attacks, true labels.

Add a method by subclassing `Method`, declaring its `traits` and registering it; `--adv-method` names it.
The traits (robustcnn/method_traits.py) go into run.json: the guard, the sweep and the report read them there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcnn.art_setup import import_art
from robustcnn.attacks.art import art_classifier, from_numpy, frozen, lazy_success_rate, to_numpy
from robustcnn.data import DatasetInfo
from robustcnn.errors import UsageError
from robustcnn.method_traits import STANDARD, MethodTraits
from robustcnn.train.config import METHODS, TrainConfig


class Method:
    """Standard training: cross-entropy on clean images.

    `model` is what attacks run on (the plain module, weights frozen meanwhile); `train_model` is what the
    loss's forward goes through: under torchrun the DDP wrapper around `model`, whose backward averages the
    gradients over processes, else `model` itself.
    """

    traits = MethodTraits()  # not adversarial: no robustness guard, the best epoch by clean accuracy

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        info: DatasetInfo,
        device: torch.device,
        train_model: nn.Module | None = None,
    ):
        self.model = model
        self.train_model = model if train_model is None else train_model
        self.config = config
        self.info = info
        self.device = device

    def loss(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, logits of the images trained on) with the model in train mode."""
        self.model.train()
        logits = self.train_model(x)
        return F.cross_entropy(logits, y), logits

    def validation_examples(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor | None:
        """The method's own adversarial examples at `eps`, for validation; None when it trains on clean images."""
        return None


METHODS.register(STANDARD)(Method)


def _pgd(classifier, config: TrainConfig, steps: int):
    import_art()
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    return ProjectedGradientDescentPyTorch(
        classifier,
        norm=config.constraint.art,
        eps=config.eps,
        eps_step=config.attack_lr,
        max_iter=steps,
        num_random_init=1,  # a random start in the ball: needed by FGSM-RS and TRADES, standard for PGD-AT
        batch_size=config.batch_size,  # the whole training batch in one ART call
        verbose=False,
    )


@METHODS.register("pgd")
class PgdTraining(Method):
    """Madry et al. (2018): minimise the loss on PGD examples, x_adv = PGD-k(x, y) inside the eps ball."""

    traits = MethodTraits(adversarial=True, guarded=True)  # PGD-10, step 2.5 eps / 10

    def __init__(self, model, config, info, device, train_model=None):
        super().__init__(model, config, info, device, train_model)
        self.classifier = art_classifier(model, info.shape, info.num_classes, device, self.attack_loss())
        self.attack = _pgd(self.classifier, config, config.attack_steps)

    def attack_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def perturb(self, x: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
        """ART generates in eval mode (BatchNorm frozen), as in Madry's and Rice's reference code."""
        if eps <= 0:
            return x
        step = self.config.attack_lr * eps / self.config.eps  # keeps steps/eps fixed while eps warms up
        self.attack.set_params(eps=eps, eps_step=step)
        with frozen(self.model), lazy_success_rate():  # ART's log-only success rate: most of a one-step call
            x_adv = self.attack.generate(to_numpy(x), to_numpy(target))
        return from_numpy(x_adv, self.device)

    def loss(self, x, y, eps):
        x_adv = self.perturb(x, y, eps)
        return super().loss(x_adv, y, eps)

    def validation_examples(self, x, y, eps):
        return self.perturb(x, y, eps)


@METHODS.register("fgsm-rs")
class FgsmRsTraining(PgdTraining):
    """Wong et al. (2020), "Fast is better than free": one step of 1.25 eps from a uniform random start.

    Cheap (two passes per batch) but prone to catastrophic overfitting; the loop's guard watches for it.
    """

    traits = MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=1.25)


@METHODS.register("n-fgsm")
class NFgsmTraining(PgdTraining):
    """de Jorge et al. (2022), "Make some noise": x + eta, eta uniform in [-2 eps, 2 eps], then one FGSM step of
    `attack_lr` (eps), not projected back into the eps ball. As cheap as FGSM-RS, and the noise and the missing
    projection keep it from catastrophic overfitting where FGSM-RS falls into it (their CIFAR-10 results). At
    MNIST's eps 0.3 its noise leaves little of a digit: docs/training.md has what that costs."""

    NOISE = 2.0  # noise radius in units of eps (the paper's k)
    traits = MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=1.0)

    def __init__(self, model, config, info, device, train_model=None):
        import_art()
        from art.attacks.evasion import FastGradientMethod

        super().__init__(model, config, info, device, train_model)
        self.attack = FastGradientMethod(self.classifier, norm=config.constraint.art, batch_size=config.batch_size)

    def perturb(self, x, target, eps):
        if eps <= 0:
            return x
        step = self.config.attack_lr * eps / self.config.eps
        noisy = (x + (torch.rand_like(x) * 2 - 1) * self.NOISE * eps).clamp(0, 1)
        self.attack.set_params(eps=step, eps_step=step)
        with frozen(self.model), lazy_success_rate():
            x_adv = self.attack.generate(to_numpy(noisy), to_numpy(target))
        return from_numpy(x_adv, self.device)

    def validation_examples(self, x, y, eps):
        """Its examples projected into the eps ball: the accuracy the guard compares is at the training eps."""
        return torch.minimum(torch.maximum(self.perturb(x, y, eps), x - eps), x + eps)


class _KlToClean(nn.Module):
    """KL(p_clean || p_adv), the TRADES inner objective. ART passes p_clean as soft labels."""

    def forward(self, logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")


@METHODS.register("trades")
class TradesTraining(PgdTraining):
    """Zhang et al. (2019): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising that KL with PGD."""

    traits = MethodTraits(adversarial=True, guarded=True)

    def attack_loss(self) -> nn.Module:
        return _KlToClean()

    def soft_labels(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return F.softmax(self.model(x), dim=1)  # (N, classes): the soft labels ART attacks

    def validation_examples(self, x, y, eps):
        return self.perturb(x, self.soft_labels(x), eps)

    def loss(self, x, y, eps):
        x_adv = self.perturb(x, self.soft_labels(x), eps)
        self.model.train()
        clean, adv = self.train_model(x), self.train_model(x_adv)  # two forwards, as in the reference code
        robust = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
        return F.cross_entropy(clean, y) + self.config.beta * robust, adv


@METHODS.register("ibp")
class IbpTraining(Method):
    """Gowal et al. (2018), certified training: kappa * CE(clean logits) + (1 - kappa) * CE(worst-case logits),
    the worst case read off interval bounds over the eps ball (the true class at its lower bound, every other
    class at its upper bound). kappa goes from 1 to 0.5 as eps ramps up (--eps-warmup), as in the paper.
    No attack is run: the bound is one pass of intervals beside the clean one (what an epoch costs:
    benchmarks/results/certify)."""

    traits = MethodTraits(adversarial=True, guarded=True)  # certified: it must resist PGD too, so the guard judges it

    def __init__(self, model, config, info, device, train_model=None):
        from robustcnn.certify.graph import check_model

        super().__init__(model, config, info, device, train_model)
        try:
            check_model(model.eval(), tuple(info.shape))
        except UsageError as error:
            raise UsageError(f"--adv-method ibp bounds the model while it trains: {error}") from None
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise UsageError(
                "--adv-method ibp: BatchNorm normalises with batch statistics while training, which "
                "interval bounds do not cover; pick an --arch without it (ibpcnn, smallcnn, lenet5)"
            )

    def loss(self, x, y, eps):
        from robustcnn.certify.bounds import bounds

        self.model.train()
        logits = self.train_model(x)  # through DDP: its backward also averages the bound's weight gradients
        clean = F.cross_entropy(logits, y)
        if eps <= 0:
            return clean, logits
        margins = bounds(
            self.model, x, eps, self.config.constraint, "ibp", y=y, num_classes=self.info.num_classes,
            dtype=torch.float32, differentiable=True,
        )  # fmt: skip
        worst = torch.cat([torch.zeros_like(margins.lower[:, :1]), -margins.lower], dim=1)  # true class first
        robust = F.cross_entropy(worst, torch.zeros_like(y))
        kappa = 1.0 - 0.5 * min(1.0, eps / self.config.eps)
        return kappa * clean + (1.0 - kappa) * robust, logits


@METHODS.register("gaussian")
class GaussianTraining(Method):
    """Cohen et al. (2019): cross-entropy on x + N(0, sigma^2 I), no clipping, the noise randomized smoothing
    (suite type `smoothing`) later certifies with at the same sigma. Not adversarial training: its model's
    PGD accuracy stays low, and the best epoch is the one most accurate on noisy held-out images."""

    traits = MethodTraits(gaussian_noise=True)  # not adversarial: no robustness guard

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x) * self.config.sigma

    def loss(self, x, y, eps):
        return super().loss(self.noisy(x), y, eps)

    def validation_examples(self, x, y, eps):
        return self.noisy(x)


def build_method(
    model: nn.Module,
    config: TrainConfig,
    info: DatasetInfo,
    device: torch.device,
    train_model: nn.Module | None = None,
) -> Method:
    return METHODS.get(config.method_name)(model, config, info, device, train_model)
