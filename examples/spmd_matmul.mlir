// y = relu(x @ w) + b on a data=2 x model=4 mesh (8 devices): x is split by rows over
// `data` and by columns over `model`, w by rows over `model`; the contraction over the
// `model` shards needs an all-reduce, which XLA's SPMD partitioner inserts.
// Run: gemma-xla run examples/spmd_matmul.mlir --arg examples/x.npy --arg examples/w.npy --arg examples/b.npy
module @spmd_matmul attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=2, "model"=4]>
  func.func public @main(
      %x: tensor<4x8xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>},
      %w: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"model"}, {}]>},
      %b: tensor<4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}]>})
      -> (tensor<4x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>},
          tensor<f32> {sdy.sharding = #sdy.sharding<@mesh, []>}) {
    %xw = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<4x4xf32>
    %zero = stablehlo.constant dense<0.0> : tensor<4x4xf32>
    %relu = stablehlo.maximum %xw, %zero : tensor<4x4xf32>
    %bb = stablehlo.broadcast_in_dim %b, dims = [1] : (tensor<4xf32>) -> tensor<4x4xf32>
    %y = stablehlo.add %relu, %bb : tensor<4x4xf32>
    %z = stablehlo.constant dense<0.0> : tensor<f32>
    %sum = stablehlo.reduce(%y init: %z) applies stablehlo.add across dimensions = [0, 1] : (tensor<4x4xf32>, tensor<f32>) -> tensor<f32>
    return %y, %sum : tensor<4x4xf32>, tensor<f32>
  }
}
