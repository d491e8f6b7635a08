"""The curvature of a loss at a trained point: Hessian-vector products, Hutchinson's trace and the
top eigenvalues by power iteration. The spectral density (Lanczos, SLQ) is in :mod:`equiprune.curvature.lanczos`.

Vectors here are flat: one tensor holding every chosen parameter in ``model.parameters()`` order
(:func:`flatten`). Products are exact double back-propagation, H·v = ∂(∇L · v)/∂θ, of the mean loss
over the given batches, weighted by batch size, so a dataset split into batches of any size gives
the same H. Several vectors go through one backward pass together (``matmat``): a data pass then
serves all of them, which is where most of the time goes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from equiprune.errors import EquipruneError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``vec`` (…, D) shaped like ``like``; leading dimensions are kept."""
    out, start = [], 0
    lead = vec.shape[:-1]
    for t in like:
        out.append(vec[..., start : start + t.numel()].view(*lead, *t.shape))
        start += t.numel()
    return out


def rademacher_probes(params: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """``n`` random ±1 vectors (n, D), drawn from torch's global RNG parameter by parameter with
    ``randint_like``: the same draws, in the same order, as PyHessian's probes for the same seed."""
    probes = []
    for _ in range(n):
        parts = []
        for p in params:
            v = torch.randint_like(p, high=2)
            v[v == 0] = -1
            parts.append(v)
        probes.append(flatten(parts))
    return torch.stack(probes)


@contextmanager
def _mode(model: nn.Module, train: bool):
    was = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was)


class HessianOperator:
    """v ↦ H·v, H the Hessian of L(θ) = Σ_b n_b·loss(model(x_b), y_b) / Σ_b n_b.

    ``loss_fn`` must average over its batch (as ``F.cross_entropy`` does). ``params``: the
    parameters H is taken over (default: every parameter that requires grad). ``train_mode``: the
    model's mode while products are taken (eval by default, as curvature at a trained point is
    usually wanted without dropout noise or batch statistics).

    ``cache_samples``: while the batches hold at most this many examples in all, each batch's
    gradient graph is built once and kept, and every product is a backward through the kept graphs
    (on CPU about 40% faster per product than forward-over-reverse, which redoes the forward and
    backward pass each time; the graphs hold the activations, so larger data is streamed instead).
    A single batch's graph is always kept.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        loss_fn: LossFn = F.cross_entropy,
        params: Sequence[torch.Tensor] | None = None,
        train_mode: bool = False,
        cache_samples: int = 8192,
    ):
        self.model, self.loss_fn, self.train_mode = model, loss_fn, train_mode
        self.batches = list(batches)
        if not self.batches:
            raise EquipruneError("HessianOperator needs at least one batch of data")
        self.params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise EquipruneError("HessianOperator: the model has no parameter that requires grad")
        self.dim = sum(p.numel() for p in self.params)
        self.samples = sum(len(y) for _, y in self.batches)
        self.products = 0  # Hessian-vector products taken so far (a matmat of k vectors counts k)
        self._graphs: dict[int, tuple[torch.Tensor, ...]] = {}  # batch index -> its kept gradient graph
        self._keep_graphs = len(self.batches) == 1 or self.samples <= cache_samples
        self._batched_ok = True
        self._functional_ok = True
        # each chosen parameter's name in the model (None: not the model's, so its rows of H are zero)
        names = {id(p): n for n, p in model.named_parameters()}
        self._model_names = [names.get(id(p)) for p in self.params]

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def _grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad(), _mode(self.model, self.train_mode):
            loss = self.loss_fn(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A gradient that does not depend on θ (the parameter is unused, or enters linearly
        # with nothing after it) has no graph; its rows of H are zero and it is left out.
        return tuple(g if g is not None and g.requires_grad else None for g in grads)

    def _batch_grads(self, i: int) -> tuple[torch.Tensor, ...]:
        if not self._keep_graphs:
            return self._grads(*self.batches[i])
        if i not in self._graphs:
            self._graphs[i] = self._grads(*self.batches[i])
        return self._graphs[i]

    def _backward(self, grads, V: torch.Tensor, out: torch.Tensor, scale: float, retain: bool) -> None:
        """out += scale·H_b·V for the batch whose gradient graph is ``grads``, each product added
        where it belongs in ``out`` (no flattened copy of every product)."""
        k = V.shape[0]
        live = [i for i, g in enumerate(grads) if g is not None]
        if not live:
            return
        outputs = [grads[i] for i in live]

        def vectors(U):
            parts = unflatten(U, self.params)
            return [parts[i] for i in live]

        def accumulate(hv, target):
            for h, part in zip(hv, unflatten(target, self.params)):
                if h is not None:
                    part.add_(h, alpha=scale)

        # Batched over the vectors where it pays: on a GPU; on a CPU a loop over them was as fast
        # or faster (4 vectors through 4 kept graphs of 500 MNIST images: 0.24-0.30 s either way).
        if k > 1 and self._batched_ok and V.device.type != "cpu":
            try:
                hv = torch.autograd.grad(outputs, self.params, grad_outputs=vectors(V),
                                         retain_graph=True, is_grads_batched=True, allow_unused=True)  # fmt: skip
                accumulate(hv, out)
                return
            except RuntimeError:
                # Some operations have no batching rule for their double backward: one vector at a time.
                self._batched_ok = False
        for j in range(k):
            last = j == k - 1 and not retain
            hv = torch.autograd.grad(outputs, self.params, grad_outputs=vectors(V[j]),
                                     retain_graph=not last, allow_unused=True)  # fmt: skip
            accumulate(hv, out[j])

    def _forward_over_reverse(self, x, y, V: torch.Tensor) -> torch.Tensor:
        """H·V on one batch as the directional derivative of the gradient (a jvp of grad), vmapped
        over the vectors: the gradient is computed once and only the tangents are batched."""
        chosen = {n: i for i, n in enumerate(self._model_names) if n is not None}
        fixed = {n: p.detach() for n, p in self.model.named_parameters() if n not in chosen}
        fixed.update(self.model.named_buffers())
        primals = {n: self.params[i].detach() for n, i in chosen.items()}

        def loss(ps):
            return self.loss_fn(functional_call(self.model, {**fixed, **ps}, (x,)), y)

        def product(v):
            parts = unflatten(v, self.params)
            return jvp(grad(loss), (primals,), ({n: parts[i] for n, i in chosen.items()},))[1]

        with _mode(self.model, self.train_mode), warnings.catch_warnings():
            # torch's own jvp decompositions are built with torch.jit.script on first use
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            hv = vmap(product, randomness="same")(V)
        k = V.shape[0]
        return torch.cat([_or_zeros(hv.get(n), p, k).reshape(k, -1) for n, p in zip(self._model_names, self.params)], 1)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H·vᵢ for every row vᵢ of ``V`` (k, D).

        Kept graphs (one batch, or data within ``cache_samples``): each product is one backward
        through each. Otherwise forward-over-reverse per batch (cheaper than building a graph per
        batch each time), falling back to double backward for models torch.func cannot trace."""
        if V.dim() != 2 or V.shape[1] != self.dim:
            raise EquipruneError(f"expected vectors of shape (k, {self.dim}), got {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        out = torch.zeros_like(V)
        for i, (x, y) in enumerate(self.batches):
            part = None
            if not self._keep_graphs and self._functional_ok:
                try:
                    part = self._forward_over_reverse(x, y, V)
                except (RuntimeError, NotImplementedError, TypeError):
                    self._functional_ok = False
            if part is None:
                self._backward(self._batch_grads(i), V, out, len(y) / self.samples, retain=self._keep_graphs)
            else:
                out.add_(part, alpha=len(y) / self.samples)
        self.products += V.shape[0]
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(1, -1))[0]

    def dense(self) -> torch.Tensor:
        """The full D×D Hessian (D products): for small models and tests."""
        return self.matmat(torch.eye(self.dim, device=self.device, dtype=self.dtype))


def _or_zeros(h: torch.Tensor | None, p: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """A parameter the loss does not reach has a zero row and column in H."""
    if h is not None:
        return h
    return torch.zeros((k, *p.shape) if k else p.shape, device=p.device, dtype=p.dtype)


def hutchinson_trace(op: HessianOperator, probes: torch.Tensor) -> torch.Tensor:
    """vᵢᵀ·H·vᵢ for each Rademacher probe (rows of ``probes``); their mean estimates tr(H)."""
    return (op.matmat(probes) * probes.to(op.dtype)).sum(dim=1)


def top_eigenvalues(
    op: HessianOperator, k: int = 1, iters: int = 100, tol: float = 1e-3, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` eigenvalues of largest magnitude and their eigenvectors (k, D), by power iteration
    with deflation: each new vector is kept orthogonal to those already found. An eigenvalue is done
    when its Rayleigh quotient changes by less than ``tol`` relative, or after ``iters`` products."""
    values, vectors = [], []
    for _ in range(k):
        v = torch.randn(op.dim, generator=generator, dtype=op.dtype).to(op.device)
        value = None
        for _ in range(iters):
            for u in vectors:
                v = v - (u @ v) * u
            v = v / v.norm()
            hv = op.matvec(v)
            rayleigh = float(v @ hv)
            v = hv
            if value is not None and abs(rayleigh - value) <= tol * (abs(value) + 1e-12):
                value = rayleigh
                break
            value = rayleigh
        for u in vectors:
            v = v - (u @ v) * u
        vectors.append(v / v.norm())
        values.append(value)
    return torch.tensor(values, dtype=torch.float64), torch.stack(vectors)
