"""A state built on the shared skeleton, run through Salt's real loaders: its callbacks see
the state's own ``__salt__``/``__opts__`` (a function reached through ``__utils__`` would run
them in the utils loader's context, where neither is packed)."""


def test_skeleton_callbacks_keep_the_state_context(make_loaders, tmp_path):
    funcs, states, _ = make_loaders(test=False)
    # Runs diff (pkg.version via __salt__), apply and verify through the skeleton.
    ret = states["kvmcluster_packages.installed"]("p", pkgs=["python3"])
    assert ret["result"] is True, ret
    assert ret["changes"] == {} and ret["comment"] == "installed: python3"
