"""Theory tools: LoRA's expressive power (Zeng & Lee) and CondLoRA's conversion matrices (Kim et al.).

- :mod:`~jaxlora.theory.linear`: the exact linear construction and its error ``sigma_{RL+1}(E)``.
- :mod:`~jaxlora.theory.fnn`: the ReLU FNN construction (layer groups, bias calibration).
- :mod:`~jaxlora.theory.tfn`: the Transformer network (TFN) construction at rank ``ceil(D/2)``.
- :mod:`~jaxlora.theory.subspace`: the normalised subspace similarity ``phi(X, Y, i, j)``.
- :mod:`~jaxlora.theory.conversion`: conversion matrices ``W0^{-1} A^T``, ``W0^{-1} B`` and their
  layer-by-layer similarity.

All constructions are float64 numpy and act on column vectors (``f(x) = W_L ... W_1 x``).
"""

from jaxlora.theory.conversion import (ConversionMatrices, ModuleSimilarity, conversion_from_factors,
                                       conversion_matrices, group_by_module, inverse_weight_random_similarity,
                                       layer_similarity,
                                       load_factors_npz, lora_condlora_similarity, paired_similarity,
                                       plot_similarity_heatmaps, random_similarity, save_factors_npz,
                                       similarity_report)
from jaxlora.theory.fnn import (DenseLayer, FNNConstruction, fnn_construction, fnn_construction_errors,
                                fnn_forward, fnn_group_layout, fnn_rank_threshold, fnn_relus_active, random_fnn)
from jaxlora.theory.linear import (LinearConstruction, chain_product, linear_construction,
                                   linear_construction_details, linear_construction_error, lowrank_approximation)
from jaxlora.theory.subspace import left_singular_vectors, similarity_matrix, subspace_similarity
from jaxlora.theory.tfn import TFN, TFNBlock, TFNConstruction, random_tfn, tfn_construction, tfn_forward

__all__ = [
    "ConversionMatrices", "conversion_from_factors", "conversion_matrices", "group_by_module",
    "layer_similarity", "paired_similarity", "plot_similarity_heatmaps", "random_similarity",
    "inverse_weight_random_similarity", "ModuleSimilarity", "similarity_report", "lora_condlora_similarity",
    "save_factors_npz", "load_factors_npz",
    "DenseLayer", "FNNConstruction", "fnn_construction", "fnn_construction_errors", "fnn_forward",
    "fnn_group_layout", "fnn_rank_threshold", "fnn_relus_active", "random_fnn",
    "LinearConstruction", "chain_product", "linear_construction", "linear_construction_details",
    "linear_construction_error", "lowrank_approximation",
    "left_singular_vectors", "similarity_matrix", "subspace_similarity",
    "TFN", "TFNBlock", "TFNConstruction", "random_tfn", "tfn_construction", "tfn_forward",
]
