"""Where does a two-stage generative run get the target's colours? (README, "What the passes show")

For an ``inter_subject`` run directory: on 256 test faces, the correlation (mean over R, G, B) of
the mean colour of the face's centre (pixels 20-43 of a 64-px image) between

- the output G(I_a, H(x')) and its target x', and the first stage I_a = G(x, H(x^a)) and x;
- G(I_a of another face, H(x')) and x' (the points), and that other face (the first stage).

Usage: python reports/scripts/appearance_code.py RUN_DIR [RUN_DIR ...]
"""

import sys
from pathlib import Path

import numpy as np
import torch

from lmbench.runner import build_dataset, build_method, saved_config
from lmbench.train import load_checkpoint


def centre_colour(images: torch.Tensor) -> np.ndarray:
    size = images.shape[-1]
    box = slice(size * 5 // 16, size * 11 // 16)
    return images[:, :, box, box].mean((2, 3)).numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[:, c], b[:, c])[0, 1] for c in range(3)]))


def measure(run_dir: Path, faces: int = 256, batch: int = 16) -> dict[str, float]:
    config = saved_config(run_dir)
    method = build_method(config)
    method.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    method.train()  # batch statistics, as in the loss
    test = build_dataset(config).test
    pairing, other = torch.roll(torch.arange(batch), 1), torch.roll(torch.arange(batch), 5)
    colours = {key: [] for key in ("output", "x_prime", "i_a", "x", "swapped", "other_x")}
    with torch.no_grad():
        for start in range(0, faces, batch):
            images = test.batch(torch.arange(start, start + batch), torch.device("cpu"))
            x, x_prime, *_ = method.make_views(images, torch.Generator().manual_seed(start))  # the run's pairs
            _, heatmaps = method.encode(torch.cat([x, x_prime]))
            h_x, h_prime = heatmaps.chunk(2)
            i_a = method.generator(x, h_x[pairing])
            found = dict(output=method.generator(i_a, h_prime), x_prime=x_prime, i_a=i_a, x=x,
                         swapped=method.generator(i_a[other], h_prime), other_x=x[other])
            for key, value in found.items():
                colours[key].append(centre_colour(value))
    c = {key: np.concatenate(value) for key, value in colours.items()}
    return {
        "output_vs_x_prime": correlation(c["output"], c["x_prime"]),
        "i_a_vs_x": correlation(c["i_a"], c["x"]),
        "swapped_vs_x_prime": correlation(c["swapped"], c["x_prime"]),
        "swapped_vs_other_x": correlation(c["swapped"], c["other_x"]),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    for run in sys.argv[1:]:
        figures = measure(Path(run))
        print(Path(run).name, " ".join(f"{k}={v:.2f}" for k, v in figures.items()))
