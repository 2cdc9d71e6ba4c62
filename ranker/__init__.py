"""The ranking model: RankBatch -> per-task logits.

Shape vocabulary, used in every docstring and shape comment of this package:

* B: batch size
* F: number of sparse features (one embedding table each)
* Fd: number of dense features
* D: embedding / token dimension
* N: number of image tokens per row
* T: number of tokens entering the interaction layer (dense tokens + F + N)
* H: attention heads
* K: number of tasks (labels)

Parts, split the way TorchRec's DLRM is: ``SparseArch`` (KeyedJaggedTensor -> B x F x D), ``DenseArch``
(B x Fd -> B x n x D), ``VisionArch`` (image rows -> B x N x D), the interaction (``ranker.interactions``,
B x T x D -> B x K x out_dim) and ``TaskHeads`` (-> B x K logits), composed by ``Ranker``.
"""
