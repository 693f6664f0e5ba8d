"""Several models: white-box comparison with its table, and transfer with its affinity matrix."""

import numpy as np
import pytest
from eval_support import assert_png, eval_config, tiny_fn

from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.reports import write_json
from tfp_advbnn.evaluation.sweeps import run_sweep
from tfp_advbnn.evaluation.transfer import compare, transfer

pytest_plugins = ["eval_support"]


def test_compare_writes_curves_and_a_table(tmp_path, trained, fit_set):
    images, labels = fit_set
    config = eval_config(attack_steps=3, max_examples=24)
    model_fns = {"No defense": trained.model_fn, "RSE": tiny_fn("rse")}
    report = compare(model_fns, images, labels, config, with_checks=False)
    assert [m["label"] for m in report["models"]] == ["No defense", "RSE"]
    assert all(len(m["accuracy"]) == 3 and m["num_examples"] == 24 for m in report["models"])
    table = report["table_markdown"].splitlines()
    assert table[2] == "| Model | 0 | 0.01 | 0.03 |"
    first = report["models"][0]
    cells = [
        f"{100 * a:.1f} ({100 * low:.1f}\u2013{100 * high:.1f})"
        for a, (low, high) in zip(first["accuracy"], first["accuracy_interval"], strict=True)
    ]
    assert table[4] == "| No defense | " + " | ".join(cells) + " |"
    assert table[5].startswith("| RSE |")
    # The second table counts an example only when its clean prediction is right too.
    robust_rows = table[table.index("| Model | 0 | 0.01 | 0.03 |", 3) + 2 :]
    assert robust_rows[0].startswith(f"| No defense | {100 * first['robust_accuracy'][0]:.1f} (")
    write_json(report, str(tmp_path / "compare.json"))
    plot_report(report, str(tmp_path / "compare.png"))
    assert_png(tmp_path / "compare.png")


def test_transfer_matrices_and_heatmap(tmp_path, trained, fit_set):
    images, labels = fit_set
    config = eval_config(attack_steps=4)
    model_fns = {"plain": trained.model_fn, "rse": tiny_fn("rse"), "rse2": tiny_fn("rse", 4)}
    report = transfer(model_fns, images, labels, config, [0.03])
    accuracy = np.array(report["accuracy"])
    assert accuracy.shape == (1, 3, 3)
    assert np.array(report["affinity"], dtype=object).shape == (1, 3, 3)
    # The white-box corner matches an independent sweep of the deterministic model.
    white_box = run_sweep(
        trained.model_fn, images, labels, eval_config(attack_steps=4, eps_grid=(0.03,))
    )
    assert accuracy[0, 0, 0] == pytest.approx(white_box.accuracy[0])
    clean = report["clean_accuracy"]
    assert clean[0] == pytest.approx(white_box.clean_accuracy)
    for s in range(3):
        for t in range(3):
            rho = report["affinity"][0][s][t]
            lost = clean[t] - accuracy[0, t, t]
            if lost > 0:
                assert rho == pytest.approx((clean[t] - accuracy[0, s, t]) / lost)
            else:
                assert rho is None
    assert report["affinity"][0][0][0] == pytest.approx(1.0)
    write_json(report, str(tmp_path / "transfer.json"))
    plot_report(report, str(tmp_path / "transfer.png"))
    assert_png(tmp_path / "transfer.png")
