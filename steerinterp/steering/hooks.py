"""Hooks that never outlive the call that added them, even when the call is interrupted.

Three tools, used by every room that puts a hook on a model:

* ``interrupts_deferred()``: a Ctrl-C (SIGINT, or ``_thread.interrupt_main``) that arrives inside the block
  is raised when the block ends. Adding or removing a hook is never cut in half by it.
* ``add_hooks(model, [(hook_name, fn), ...])``: TransformerLens hooks with a ``HookHandle`` that removes
  exactly those (``remove()``, or use it as a context manager). Each hook is recorded in the handle in the
  same uninterruptible step that adds it.
* ``hook_guard(model)``: around a call into TransformerLens that adds hooks of its own (``run_with_cache``,
  ``model.hooks()``), restore every hook point and the context level to what they were on entry, whatever
  happened inside.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import weakref
from collections.abc import Iterable, Iterator

from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT for the duration of the block and deliver it on exit (main thread only: other
    threads never receive KeyboardInterrupt, so there the block simply runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    except ValueError:  # not in the main interpreter's main thread after all
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:  # deliver it as the handler in force would have
            if callable(previous):
                previous(signal.SIGINT, pending[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
            elif previous is None:  # a handler installed outside Python: Python's default behaviour
                raise KeyboardInterrupt


def hook_point(model: HookedModel, name: str):
    """The ``HookPoint`` called ``name``, or a one-line error naming what exists.

    Where sae-lens's ``HookedSAETransformer.add_sae`` has spliced an SAE in at ``name`` the hook point is gone,
    and the error says where to steer instead: ``name.hook_sae_output`` (after the SAE: what later layers
    read) or ``name.hook_sae_input`` (what the SAE encodes; sae-lens computes its error term from the
    unsteered input)."""
    check_attached(model)
    hp = model.hook_dict.get(name)
    if hp is None:
        if f"{name}.hook_sae_output" in model.hook_dict:
            raise SteerInterpError(f"an SAE is spliced in at {name}: steer at {name}.hook_sae_output (after the SAE) "
                                   f"or {name}.hook_sae_input (what it encodes), or splice the SAE after steering")
        raise SteerInterpError(f"the model has no hook point {name!r} (it has {model.cfg.n_layers} layers); "
                               "check the layer index or hook name")
    return hp


_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> handles of attach()


def check_attached(model: HookedModel) -> None:
    """Refuse to go on when an ``attach()``-ed hook no longer runs because its hook point was replaced
    (e.g. an SAE spliced in at that site afterwards): the steering would be silently gone."""
    for handle in list(_ATTACHED.get(model, ())):
        lost = handle.detached_from_model() if handle.active else []
        if lost:
            raise SteerInterpError(f"steering attached at {lost[0]} no longer runs: that hook point was replaced after "
                                   "attach() (an SAE spliced in there?); remove() the handle and attach again")


class HookHandle:
    """Hooks added by ``add_hooks`` / ``attach()``; ``remove()`` takes exactly those off (idempotent).

    ``added`` lists what is on the model; ``remove()`` always completes, even when a Ctrl-C lands in it
    (the interrupt is raised again once every hook is off)."""

    def __init__(self, model: HookedModel):
        self._model = model
        self.added: list[tuple[object, object]] = []  # (HookPoint, TransformerLens LensHandle)

    def add(self, name: str, fn, *, permanent: bool = False) -> None:
        hp = hook_point(self._model, name)
        with interrupts_deferred():
            hp.add_hook(fn, dir="fwd", is_permanent=permanent)
            self.added.append((hp, hp.fwd_hooks[-1]))

    def remove(self) -> None:
        interrupted = False
        while self.added:
            try:
                with interrupts_deferred():
                    while self.added:
                        hp, lens = self.added[-1]
                        lens.hook.remove()
                        if lens in hp.fwd_hooks:
                            hp.fwd_hooks.remove(lens)
                        self.added.pop()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    @property
    def active(self) -> bool:
        return bool(self.added)

    def detached_from_model(self) -> list[str]:
        """Names of hook points this handle's hooks sit on that the model no longer uses (e.g. an SAE was
        spliced in over them, so those hooks no longer run)."""
        current = self._model.hook_dict
        return [hp.name for hp, _ in self.added if current.get(hp.name) is not hp]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        interrupted = False
        while self.added:  # a Ctrl-C landing on the call to remove() itself: call it again
            try:
                self.remove()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt


def add_hooks(model: HookedModel, hooks: Iterable[tuple[str, object]], permanent: bool = False) -> HookHandle:
    """Add ``(hook_name, fn)`` pairs to a model's HookPoints and return a handle that removes them.

    Every name is checked before anything is added; if adding fails or is interrupted part-way, what was
    added is removed again."""
    pairs = list(hooks)
    for name, _ in pairs:
        hook_point(model, name)
    handle = HookHandle(model)
    try:
        for name, fn in pairs:
            handle.add(name, fn, permanent=permanent)
    except BaseException:
        handle.__exit__()
        raise
    if permanent:
        _ATTACHED.setdefault(model, weakref.WeakSet()).add(handle)
    return handle


@contextlib.contextmanager
def hooks_applied(model: HookedModel, hooks: Iterable[tuple[str, object]]) -> Iterator[HookedModel]:
    """``(hook_name, fn)`` pairs on the model for the duration of the block; all of them off on exit, whatever
    happens (the steering objects' ``applied()``)."""
    handle = HookHandle(model)
    try:
        for name, fn in hooks:
            handle.add(name, fn)
        yield model
    finally:
        interrupted = False
        while handle.added:  # inline, not a call to __exit__: a Ctrl-C landing on a call's entry is caught here
            try:
                handle.remove()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt


def _hook_state(hp) -> tuple:
    return (list(hp.fwd_hooks), list(hp.bwd_hooks), dict(hp._forward_hooks), dict(hp._backward_hooks))


@contextlib.contextmanager
def hook_guard(model: HookedModel) -> Iterator[None]:
    """Whatever a TransformerLens call inside the block adds to the model's hook points, none of it stays.

    On exit (normal, error or interrupt) every hook point gets back the hooks it held on entry, and the
    model's ``context_level`` its value. Meant for calls such as ``run_with_cache`` whose own clean-up an
    interrupt can cut short; not for user code that adds hooks on purpose."""
    states = {name: _hook_state(hp) for name, hp in model.hook_dict.items()}
    level = getattr(model, "context_level", None)
    try:
        yield
    finally:
        interrupted = False
        while True:  # a Ctrl-C landing on the clean-up itself: run it again, then raise it
            try:
                _restore(model, states, level)
                break
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt


def _restore(model: HookedModel, states: dict, level) -> None:
    """Give every hook point the hooks it held in ``states`` and the model its context level (idempotent)."""
    with interrupts_deferred():
        for name, hp in model.hook_dict.items():
            if name not in states:
                continue
            fwd, bwd, torch_fwd, torch_bwd = states[name]
            if hp.fwd_hooks != fwd or hp.bwd_hooks != bwd:
                for lens in [h for h in hp.fwd_hooks if h not in fwd] + [h for h in hp.bwd_hooks if h not in bwd]:
                    lens.hook.remove()
                hp.fwd_hooks[:] = fwd
                hp.bwd_hooks[:] = bwd
            for registry, kept in ((hp._forward_hooks, torch_fwd), (hp._backward_hooks, torch_bwd)):
                for key in [k for k in registry if k not in kept]:
                    registry.pop(key, None)
                    hp._forward_hooks_with_kwargs.pop(key, None)
                    hp._forward_hooks_always_called.pop(key, None)
        if level is not None:
            model.context_level = level


def leftover_hooks(model: HookedModel) -> list[str]:
    """Hook points that hold any hook (TransformerLens or PyTorch level), e.g. to check a clean model."""
    return [name for name, hp in model.hook_dict.items()
            if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks]
