"""dpjax.convex: differentially private convex models without DP-SGD.

L2-regularized logistic regression (multinomial and one-vs-rest), a linear SVM
with a smoothed hinge, and ridge regression, solved to within a stated distance
of the minimizer whatever the data (L-BFGS, then a fixed number of accelerated
steps computed from public constants), and privatized by output perturbation,
objective perturbation or approximate minima perturbation, with Gaussian
((epsilon, delta)) or L2-Laplace (pure epsilon) noise. Feature vectors are
clipped to a stated ``data_norm`` (never computed from the data), so the
Lipschitz constants are data-independent. Every release is a record in a
:class:`dpjax.PrivacyTracker` (``GaussianRelease`` or ``PureEpsilonRelease``),
made before the solver runs, so a convex fit and DP-SGD steps compose in one
account (output perturbation holds under add/remove too; the objective-based
mechanisms under replace-one).

    ConvexProblem, LOSSES, ConvergenceError   the models and their constants  (_problems;
                                              ConvergenceError is no longer raised)
    gaussian_noise, l2_laplace_noise          noise for parameter vectors     (_noise)
    private_fit, PrivateFit, MECHANISMS,      the mechanisms                  (_mechanisms)
      NOISES, calibrate_gaussian
    DPLogisticRegression, DPLinearSVC,        scikit-learn-style estimators   (_estimators)
      DPRidgeRegression
"""

from dpjax.convex._estimators import DPLinearSVC as DPLinearSVC
from dpjax.convex._estimators import DPLogisticRegression as DPLogisticRegression
from dpjax.convex._estimators import DPRidgeRegression as DPRidgeRegression
from dpjax.convex._mechanisms import MECHANISMS as MECHANISMS
from dpjax.convex._mechanisms import NOISES as NOISES
from dpjax.convex._mechanisms import PrivateFit as PrivateFit
from dpjax.convex._mechanisms import calibrate_gaussian as calibrate_gaussian
from dpjax.convex._mechanisms import private_fit as private_fit
from dpjax.convex._noise import gaussian_noise as gaussian_noise
from dpjax.convex._noise import l2_laplace_noise as l2_laplace_noise
from dpjax.convex._problems import LOSSES as LOSSES
from dpjax.convex._problems import ConvergenceError as ConvergenceError
from dpjax.convex._problems import ConvexProblem as ConvexProblem
