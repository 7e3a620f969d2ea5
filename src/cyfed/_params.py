"""Hyper-parameters by introspection: scikit-learn's estimator contract without scikit-learn.

The contract (scikit-learn's `BaseEstimator`): every parameter of a class's
``__init__`` is stored unchanged, under its own name, as an attribute.  Then

* `get_params(obj)` reads them back ({name: value}, nested ``name__key`` entries
  for parameters that have parameters of their own with ``deep=True``);
* `set_params(obj, **params)` writes them (nested ones through the parameter);
* `clone(obj, **params)` builds a fresh, unfitted copy with the same parameters
  (deep copies, except communicators, which are shared: a copy of an MPI
  communicator is not the same group of processes), then applies ``params``.

These work on any object that keeps the contract; `ParamsMixin` adds them as
methods (and a ``__repr__`` naming the parameters that differ from their
defaults), so `sklearn.base.clone` and scikit-learn's search tools accept the
trainers.  Nothing here imports scikit-learn.
"""
import copy
import difflib
import inspect

from cyfed.comm import Communicator


def param_names(cls):
    """The sorted names of ``cls.__init__``'s parameters (self, *args, **kwargs excluded)."""
    init = cls.__init__
    if init is object.__init__:
        return []
    names = []
    for p in inspect.signature(init).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{cls.__name__}.__init__ takes *args or **kwargs; the parameter "
                            "contract needs every parameter named in its signature")
        if p.name != "self":
            names.append(p.name)
    return sorted(names)


def _has_params(value):
    """Whether `value` is an object (not a class) with parameters of its own."""
    return hasattr(value, "get_params") and not isinstance(value, type)


def get_params(obj, deep=True):
    """{name: value} of obj's constructor parameters; with deep=True also
    ``name__key: value`` for every parameter that has parameters of its own."""
    out = {}
    for name in param_names(type(obj)):
        value = getattr(obj, name)
        if deep and _has_params(value):
            out.update((f"{name}__{k}", v) for k, v in value.get_params(deep=True).items())
        out[name] = value
    return out


def unknown_param_error(obj, name):
    """The ValueError for a parameter `name` that `obj` does not take, with a suggestion."""
    valid = param_names(type(obj))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"invalid parameter {name!r} for {type(obj).__name__}{hint}; "
                      f"valid parameters: {', '.join(valid)}")


def set_params(obj, **params):
    """Set constructor parameters (``name=value``, or ``name__key=value`` on the
    parameter `name`); ValueError naming an unknown one.  Returns obj."""
    valid = set(param_names(type(obj)))
    nested = {}
    for key, value in params.items():
        name, sep, sub = key.partition("__")
        if name not in valid:
            raise unknown_param_error(obj, name)
        if sep:
            nested.setdefault(name, {})[sub] = value
        else:
            setattr(obj, name, value)
    for name, sub_params in nested.items():
        value = getattr(obj, name)
        if not _has_params(value):
            raise ValueError(f"parameter {name!r} of {type(obj).__name__} is a "
                             f"{type(value).__name__}, which has no parameters to set "
                             f"({', '.join(f'{name}__{k}' for k in sub_params)})")
        value.set_params(**sub_params)
    return obj


def _copy_param(value):
    """A fresh copy of a parameter: clone an estimator, share a communicator, deep-copy
    anything else."""
    if _has_params(value):
        return clone(value)
    if isinstance(value, Communicator):
        return value
    return copy.deepcopy(value)


def clone(obj, **params):
    """A new, unfitted ``type(obj)`` with copies of obj's parameters, then `params` set."""
    fresh = type(obj)(**{name: _copy_param(value)
                         for name, value in get_params(obj, deep=False).items()})
    return set_params(fresh, **params)


def _changed(value, default):
    """Whether a parameter differs from its default (compared by repr: arrays, objects)."""
    return default is inspect.Parameter.empty or (value is not default
                                                  and repr(value) != repr(default))


class ParamsMixin:
    """get_params / set_params / __repr__ from ``__init__``'s signature (scikit-learn's
    `BaseEstimator` contract: every ``__init__`` parameter stored unchanged under its
    own name), so `sklearn.base.clone`, pipelines and grid searches accept the class."""

    def get_params(self, deep=True):
        """{name: value} of the constructor parameters (nested ``name__key`` with deep)."""
        return get_params(self, deep)

    def set_params(self, **params):
        """Set constructor parameters (nested ones as ``name__key``); returns self."""
        return set_params(self, **params)

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (its tools ask for them): a supervised estimator
        of 2-d arrays, scored by its own `score`.  Only called by scikit-learn."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=True))

    def __repr__(self):
        defaults = {name: p.default
                    for name, p in inspect.signature(type(self).__init__).parameters.items()}
        args = [f"{name}={value!r}" for name, value in self.get_params(deep=False).items()
                if _changed(value, defaults[name])]
        return f"{type(self).__name__}({', '.join(args)})"
