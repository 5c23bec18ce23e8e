"""
State for the packages of a kvmcluster component, reported the same way under test=True
and in the real run: one entry per package asked for, ``{"old": None, "new": version}``
(the candidate under test, the installed version after), never the dependencies a real
install pulls in and a prediction cannot know.
"""

__virtualname__ = "kvmcluster_packages"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def installed(name, pkgs, install_recommends=None, hypervisor_only=False):
    """
    ``pkgs`` are installed (any version; upgrades are the site's package policy).

    name
        Any; reported back.
    pkgs
        Package names (map.jinja ``pkgs:*``).
    install_recommends
        APT only: also install recommended packages (default: the model's
        ``packages:install_recommends``).
    hypervisor_only
        Nothing to install on a management-only node (the KVM packages); on a hypervisor
        the model's ``packages:extra`` (the site's own) come with them.
    """
    if hypervisor_only:
        model = __salt__["kvmcluster_model.current"]()
        gated = _skeleton().not_a_hypervisor(name, model)
        if gated:
            return gated
        pkgs = list(pkgs) + [p for p in model["packages"]["extra"] if p not in pkgs]
    test = __opts__["test"]
    extra = {} if install_recommends is None or __grains__.get("os_family") != "Debian" \
        else {"install_recommends": bool(install_recommends)}
    return _skeleton().converge(
        name, test, lambda: _skeleton().packages_diff(__salt__, pkgs, test),
        lambda changes: _skeleton().packages_install(__salt__, changes,
                                                                        **extra),
        ok=f"installed: {', '.join(pkgs)}", planned=lambda c: f"would install {', '.join(c)}",
        done=lambda c: f"installed {', '.join(c)}")
