"""Domain adaptation (notebook 04): gradient reversal, DANN, Deep CORAL, AdaBN, baselines.

One small file per method (tllib-style), all trained through `tlc.fit` with a step:
- `loader`: PairedLoader, (source_batch, target_batch) pairs with the target cycling;
- `baselines`: source_only_step (lower bound), oracle_step (train on target labels);
- `adabn`: adapt_batchnorm, re-estimate BatchNorm statistics on the target;
- `coral`: coral_loss, coral_step (Deep CORAL);
- `grl`: the gradient reversal layer and DANN's lambda schedule;
- `dann`: DomainDiscriminator, DANN, dann_step;
- `nets`: GaninCNN, the DANN paper's digit network (with per-image standardisation);
- `recipes`: one call per method with the course's settings (notebook widget, benchmark).
"""

from .adabn import adapt_batchnorm, batchnorm_layers
from .baselines import oracle_step, source_only_step
from .coral import coral_loss, coral_step, covariance
from .dann import DANN, DomainDiscriminator, dann_step, domain_adversarial_loss
from .grl import GradientReversal, GradientReverseFunction, dann_lambda, grad_reverse
from .loader import PairedLoader, paired
from .nets import GaninCNN, Standardize
from .recipes import METHODS, Recipe, run_method

__all__ = [
    "DANN", "METHODS", "DomainDiscriminator", "GaninCNN", "GradientReversal",
    "GradientReverseFunction",
    "PairedLoader", "Recipe", "adapt_batchnorm", "batchnorm_layers", "coral_loss", "coral_step",
    "covariance", "dann_lambda", "dann_step", "domain_adversarial_loss", "grad_reverse",
    "oracle_step", "paired", "run_method", "source_only_step", "Standardize",
]
