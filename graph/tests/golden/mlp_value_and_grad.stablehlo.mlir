module @mlp_value_and_grad attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<4x3xf32> {mhlo.frontend_attributes = {name = "x"}}, %arg1: tensor<3x5xf32> {mhlo.frontend_attributes = {name = "w1"}}, %arg2: tensor<5x2xf32> {mhlo.frontend_attributes = {name = "w2"}}, %arg3: tensor<4x2xf32> {mhlo.frontend_attributes = {name = "y"}}) -> (tensor<f32> {jax.result_info = "loss"}, tensor<3x5xf32> {jax.result_info = "grad.w1"}, tensor<5x2xf32> {jax.result_info = "grad.w2"}) {
    %0 = "stablehlo.dot_general"(%arg0, %arg1) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>} : (tensor<4x3xf32>, tensor<3x5xf32>) -> tensor<4x5xf32>
    %1 = "stablehlo.tanh"(%0) : (tensor<4x5xf32>) -> tensor<4x5xf32>
    %2 = "stablehlo.dot_general"(%1, %arg2) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>} : (tensor<4x5xf32>, tensor<5x2xf32>) -> tensor<4x2xf32>
    %3 = "stablehlo.subtract"(%2, %arg3) : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x2xf32>
    %4 = "stablehlo.multiply"(%3, %3) : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x2xf32>
    %5 = "stablehlo.constant"() {value = dense<0.0e0> : tensor<f32>} : () -> tensor<f32>
    %6 = "stablehlo.reduce"(%4, %5) ({
    ^bb0(%7: tensor<f32>, %8: tensor<f32>):
      %9 = "stablehlo.add"(%7, %8) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%9) : (tensor<f32>) -> ()
    }) {dimensions = array<i64: 0, 1>} : (tensor<4x2xf32>, tensor<f32>) -> tensor<f32>
    %10 = "stablehlo.constant"() {value = dense<8.0e0> : tensor<f32>} : () -> tensor<f32>
    %11 = "stablehlo.divide"(%6, %10) : (tensor<f32>, tensor<f32>) -> tensor<f32>
    %12 = "stablehlo.constant"() {value = dense<1.0e0> : tensor<f32>} : () -> tensor<f32>
    %13 = "stablehlo.divide"(%12, %10) : (tensor<f32>, tensor<f32>) -> tensor<f32>
    %14 = "stablehlo.broadcast_in_dim"(%13) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<4x2xf32>
    %15 = "stablehlo.multiply"(%14, %3) : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x2xf32>
    %16 = "stablehlo.multiply"(%14, %3) : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x2xf32>
    %17 = "stablehlo.add"(%15, %16) : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x2xf32>
    %18 = "stablehlo.dot_general"(%17, %arg2) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [1]>} : (tensor<4x2xf32>, tensor<5x2xf32>) -> tensor<4x5xf32>
    %19 = "stablehlo.dot_general"(%17, %1) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [0], rhs_contracting_dimensions = [0]>} : (tensor<4x2xf32>, tensor<4x5xf32>) -> tensor<2x5xf32>
    %20 = "stablehlo.transpose"(%19) {permutation = array<i64: 1, 0>} : (tensor<2x5xf32>) -> tensor<5x2xf32>
    %21 = "stablehlo.multiply"(%1, %1) : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5xf32>
    %22 = "stablehlo.constant"() {value = dense<1.0e0> : tensor<f32>} : () -> tensor<f32>
    %23 = "stablehlo.broadcast_in_dim"(%22) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<4x5xf32>
    %24 = "stablehlo.subtract"(%23, %21) : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5xf32>
    %25 = "stablehlo.multiply"(%18, %24) : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5xf32>
    %26 = "stablehlo.dot_general"(%arg0, %25) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [0], rhs_contracting_dimensions = [0]>} : (tensor<4x3xf32>, tensor<4x5xf32>) -> tensor<3x5xf32>
    "func.return"(%11, %26, %20) : (tensor<f32>, tensor<3x5xf32>, tensor<5x2xf32>) -> ()
  }
}
