"""The end-to-end demo on the bundled digits (CPU, about 36 minutes on 2 cores).

    python experiments/demo.py --workdir runs/demo    (or: python -m jaxar.recipes.demo)

Trains a VQ tokenizer and a small LlamaGen GPT, samples every class with CFG, writes
``samples_grid.png`` and ``report.json`` (tokenizer PSNR / SSIM / usage; the samples' class
accuracy by an independent scikit-learn judge, Fréchet distance, precision, recall and
within-class diversity against held-out real digits).
"""

from jaxar.recipes.demo import main

if __name__ == "__main__":
    main()
