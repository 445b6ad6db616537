"""The README's figure: Table 7 (M1, full MNIST, every batch size trained to loss 0.001) as the
paper published it and as reproduced in paper-results/, λ_max of the weight Hessian and FGSM
accuracy against the batch size. Reads the committed results only; writes docs/table7.png.

    .venv/bin/python scripts/readme_figure.py
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hessbatch.paper import published, registry  # noqa: E402
from hessbatch.paper.profiles import load_profile, repo_root, selected  # noqa: E402
from hessbatch.store import Store  # noqa: E402

PAGE = "01-batch-size--M1-cpu"


def main() -> None:
    root = repo_root()
    (name, chapter, params, _), = [r for r in selected(load_profile("paper"), [PAGE]) if r[0] == PAGE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = registry.run_chapter(chapter, params, Store(root / "paper-results", read_only=True))["table"]
    paper = published.batch_size_table("M1")[1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for t, style, color, label in ((paper, "o--", "tab:blue", "paper (Table 7)"),
                                   (ours, "s-", "tab:green", "hessbatch, 2 CPU cores")):
        a.plot(t["batch_size"], t["lambda_theta_train"], style, color=color, label=f"{label}, train")
        a.plot(t["batch_size"], t["lambda_theta_test"], style, color=color, alpha=0.4, label=f"{label}, test")
        b.plot(t["batch_size"], 100 * t["adv_a_test"], style, color=color, label=label)
    a.set(xscale="log", yscale="log", xlabel="batch size", ylabel="λ_max of the weight Hessian")
    b.set(xscale="log", xlabel="batch size", ylabel="FGSM accuracy, test, ε = 0.1 (%)")
    for ax in (a, b):
        ax.set_xticks(list(ours["batch_size"]), [str(x) for x in ours["batch_size"]])
        ax.minorticks_off()
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.suptitle("M1 on MNIST, every batch size trained to loss 0.001", fontsize=10)
    fig.tight_layout()
    out = Path(root) / "docs" / "table7.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
