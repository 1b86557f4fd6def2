"""Acting on a spectrum: resize, merge and extract LoRA adapters, exactly, with an account of what was kept.

- :func:`~deltaw.act.resize.resize`: cut a LoRA to the rank its spectrum needs (factored SVD, ΔW
  never formed);
- :func:`~deltaw.act.merge.merge`: the weighted sum Σ wᵢ·ΔWᵢ of LoRAs on one base, by stacking
  their factors (exact, factored);
- :func:`~deltaw.act.extract.extract`: a LoRA from a full fine-tune (dense ΔW, randomized top-k or
  full SVD);
- :mod:`~deltaw.act.rules`: the rank rules (fixed rank, energy τ, σ-ratio X, rank cap).

Each writes a PEFT or kohya adapter and a ``deltaw.resize/1`` report: per module the old and new
rank, the retained share of ‖ΔW‖²_F and the Frobenius error from the discarded σ.
"""
