"""The short setting label names the processing, so result tables do not mislabel rows."""

from rotaquant.quant.recipe import PTQRecipe

BITS = dict(w_bits=4, a_bits=4, k_bits=4, v_bits=4)


def test_label_names_the_processing():
    assert PTQRecipe(**BITS, rotate=False, smoothquant_alpha=0.5).label().endswith("SmoothQuant a=0.5")
    assert PTQRecipe(**BITS, rotate=False).label().endswith("no rotation")
    assert PTQRecipe(**BITS, rotate=True).label().endswith(" rotated")
    assert PTQRecipe(**BITS, rotate=True, rotation_path="r.safetensors").label().endswith("learned rotation")
    assert PTQRecipe(rotate=False).label() == "FP (no quantization)"
