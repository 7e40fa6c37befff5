"""Domain adaptation (notebook 04): gradient reversal, DANN, Deep CORAL, AdaBN, baselines.

One small file per method (tllib-style), all trained through `tlc.fit` with a step:
- `loader`: PairedLoader, (source_batch, target_batch) pairs with the target cycling;
- `baselines`: source_only_step (lower bound), oracle_step (train on target labels);
- `adabn`: adapt_batchnorm, re-estimate BatchNorm statistics on the target;
- `coral`: coral_loss, coral_step (Deep CORAL);
- `grl`: the gradient reversal layer and DANN's lambda schedule;
- `dann`: DomainDiscriminator, DANN, dann_step;
- `dann_coral`: dann_coral_step, DANN with a CORAL term (the course's "improved" method);
- `distance`: proxy_a_distance, how well a linear classifier tells the domains apart;
- `nets`: GaninCNN, the DANN paper's digit network (with per-image standardisation);
- `recipes`: one call per method with the course's settings (notebook widget, benchmark).
"""

from .adabn import adapt_batchnorm, batchnorm_layers
from .baselines import oracle_step, source_only_step
from .coral import coral_loss, coral_step, covariance
from .dann import DANN, DomainDiscriminator, dann_step, domain_adversarial_loss
from .dann_coral import dann_coral_step
from .distance import domain_features, proxy_a_distance
from .grl import GradientReversal, GradientReverseFunction, dann_lambda, grad_reverse
from .loader import PairedLoader, paired
from .nets import NORMALIZE, GaninCNN, Standardize
from .recipes import BASELINES, LABELS, METHODS, MethodResult, Recipe, recipe_for, run_method

__all__ = [
    "BASELINES", "DANN", "LABELS", "METHODS", "NORMALIZE", "DomainDiscriminator", "GaninCNN",
    "GradientReversal", "GradientReverseFunction", "MethodResult", "PairedLoader", "Recipe",
    "Standardize", "adapt_batchnorm", "batchnorm_layers", "coral_loss", "coral_step",
    "covariance", "dann_coral_step", "dann_lambda", "dann_step", "domain_adversarial_loss",
    "domain_features", "grad_reverse", "oracle_step", "paired", "proxy_a_distance",
    "recipe_for", "run_method", "source_only_step",
]
