"""Hostile and careless input: the index of the classes adverse is held to, and where each is tested.

A security tool reads files from strangers. Every class below was found by probing adverse as a careless or
hostile user would; each has tests that fail if it comes back. The tests live beside the code they exercise:

* ``test_hostile_models.py``: code-bearing model files (``.pt2``, TorchScript) — payloads never run, files
  are never written, archives beyond the limits are refused; exported programs are attacked and audited; the
  resume fingerprint covers the model's code and file.
* ``test_hostile_data.py``: CSV (BOM, header detection, label column, encodings), images (16-bit, float, modes,
  FIFOs, links, decompression bombs, damage), ``.npz`` (truncation, bit flips, huge declared shapes, object
  arrays), size limits.
* ``test_hostile_results.py``: ``results.json`` and ``examples.npz`` validated against the schema before the
  report renders them (text drawn verbatim, never as mathtext or HTML); tampered resume state discarded; NaN,
  infinite or misshapen outputs; data that does not fit the model; CLI integers that cannot be meant.
* ``test_bad_input.py``: every numeric argument of every public entry point (NaN, inf, wrong type, out of
  range), eps of the wrong type, inputs of another dtype, empty AutoAttack lists, AutoAttack state files.
* ``test_properties.py``: ``success`` is exactly "the returned x_adv is adversarial" for every attack
  (the FAB-L1 boundary case); ``test_checks.py``: the steps check is a binomial test.

This module checks that index (so a class cannot lose its tests silently) and runs the end-to-end cases that
span the classes: the CLI never answers a user's mistake with a traceback.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adverse.cli import app

CLASSES: dict[str, list[str]] = {
    "code from model files": [
        "test_hostile_models::test_a_pt2_payload_never_runs",
        "test_hostile_models::test_torchscript_that_writes_files_is_refused",
        "test_hostile_models::test_torchscript_code_outside_the_allowlist_is_refused",
        "test_hostile_models::test_archives_beyond_the_limits_are_refused_quickly",
        "test_hostile_models::test_ordinary_archives_load_without_trust",
    ],
    "advertised formats that do not work": [
        "test_hostile_models::test_an_exported_program_is_attacked_and_audited",
        "test_hostile_models::test_an_exported_program_in_training_mode_is_refused",
    ],
    "silent wrong numbers": [
        "test_hostile_models::test_resume_state_is_not_shared_by_models_with_the_same_weights",
        "test_hostile_data::test_csv_bom_does_not_hide_the_label_column",
        "test_hostile_data::test_csv_label_column_is_matched_in_any_case",
        "test_hostile_data::test_csv_without_header_keeps_its_first_row",
        "test_hostile_data::test_sixteen_bit_images_are_scaled_by_65535",
        "test_hostile_data::test_float_tiffs_are_used_as_they_are_and_refused_outside_0_1",
        "test_hostile_data::test_bit_flipped_npz_is_refused_not_read_as_other_numbers",
        "test_hostile_results::test_bad_outputs_are_model_errors_in_attacks_and_audit",
        "test_hostile_results::test_output_check_warns_on_nan",
        "test_hostile_results::test_certify_checks_labels_and_outputs",
        "test_hostile_results::test_damaged_state_is_discarded_with_a_warning",
        "test_bad_input::test_numeric_arguments_are_refused_by_name",
        "test_bad_input::test_steps_as_a_float_and_a_negative_step_size",
        "test_bad_input::test_autoattack_custom_list_must_not_be_empty",
        "test_bad_input::test_autoattack_state_path_is_checked",
    ],
    "tracebacks instead of answers": [
        "test_hostile_results::test_tampered_results_exit_2_naming_the_path",
        "test_hostile_results::test_hostile_text_in_every_string_is_drawn_and_escaped",
        "test_hostile_results::test_random_mutations_render_or_exit_2",
        "test_hostile_results::test_tampered_examples_npz_exit_2",
        "test_hostile_results::test_data_that_does_not_fit_the_model",
        "test_hostile_data::test_truncated_npz_is_refused",
        "test_hostile_data::test_huge_declared_shapes_are_refused_before_allocating",
        "test_hostile_data::test_random_byte_flips_give_the_same_data_or_an_input_error",
        "test_hostile_data::test_csv_encodings",
        "test_bad_input::test_eps_of_the_wrong_type",
        "test_bad_input::test_inputs_of_another_dtype_than_the_model",
        "test_bad_input::test_inputs_of_a_shape_the_model_cannot_take",
    ],
    "hangs and crashes": [
        "test_hostile_data::test_a_fifo_is_refused_without_blocking",
        "test_hostile_data::test_decompression_bombs_are_refused_before_decoding",
        "test_hostile_results::test_fifo_is_refused_without_blocking",
        "test_hostile_results::test_cli_integers_that_cannot_be_meant",
        "test_hostile_results::test_config_threads_are_bounded_too",
    ],
    "a test suite that fails on a fresh machine": [
        "test_properties::test_attack_properties",
        "test_checks::test_quiet_on_pgd_trained_model",
        "test_checks::test_steps_check_fires_on_an_unconverged_attack",
        "test_checks::test_steps_threshold_is_a_binomial_test",
        "test_models_data::test_recipes_train_on_a_fixed_thread_count",
    ],
}


@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_every_class_keeps_its_tests(cls: str) -> None:
    for ref in CLASSES[cls]:
        module, name = ref.split("::")
        assert callable(getattr(importlib.import_module(module), name, None)), f"{cls}: {ref} is gone"


def test_ci_profile_is_derandomized() -> None:
    """CI draws the same hypothesis examples on every run (a failure reproduces); 'explore' is opt-in."""
    from hypothesis import settings

    if settings._current_profile == "ci":
        assert settings.default.derandomize and settings.default.database is None


# ------------------------------------------------------------------------------------- the CLI, end to end
@pytest.fixture
def files(tmp_path):
    """A digits-shaped .npz and the tiny MLP's safetensors next to it."""
    from safetensors.torch import save_file

    from adverse.zoo import MLP

    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.uniform(0, 1, (12, 1, 8, 8)).astype(np.float32), y=g.integers(0, 10, 12))
    torch.manual_seed(0)
    save_file(MLP(64, 10).state_dict(), str(tmp_path / "m.safetensors"))
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--model", "{d}/m.safetensors", "--arch", "MLP", "--data", "{d}/d.npz", "--eps", "nan"], "--eps"),
    (["--model", "{d}/m.safetensors", "--arch", "MLP", "--data", "{d}/d.npz", "--steps", "0"], "steps"),
    (["--model", "{d}/m.safetensors", "--arch", "MLP", "--data", "{d}/d.npz", "--n", "-3"], "n"),
    (["--model", "{d}/m.safetensors", "--arch", "SmallCNN", "--data", "{d}/d.npz"], "architecture"),
    (["--model", "{d}/d.npz", "--arch", "MLP", "--data", "{d}/d.npz"], "d.npz"),
    (["--model", "{d}/m.safetensors", "--arch", "MLP", "--data", "{d}/nothing.npz"], "nothing.npz"),
    (["--model", "{d}", "--arch", "MLP", "--data", "{d}/d.npz"], ""),
])
def test_user_mistakes_exit_2_with_a_message_and_no_traceback(files, args, message) -> None:
    out = files / "out"
    result = CliRunner().invoke(app, ["audit", *[a.format(d=files) for a in args], "--out", str(out),
                                      "--suites", "evasion", "--no-checks"])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and message in text
    assert not (out / "results.json").exists()
