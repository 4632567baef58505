module @block attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<1x4x2x8xf32> {mhlo.frontend_attributes = {name = "x"}}, %arg1: tensor<8xf32> {mhlo.frontend_attributes = {name = "w"}}, %arg2: tensor<1x4xi32> {mhlo.frontend_attributes = {name = "pos"}}) -> (tensor<1x4x2x8xf32> {jax.result_info = "out0"}, tensor<4x4xi1> {jax.result_info = "out1"}) {
    %0 = "stablehlo.multiply"(%arg0, %arg0) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %1 = "stablehlo.constant"() {value = dense<0.0e0> : tensor<f32>} : () -> tensor<f32>
    %2 = "stablehlo.reduce"(%0, %1) ({
    ^bb0(%3: tensor<f32>, %4: tensor<f32>):
      %5 = "stablehlo.add"(%3, %4) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%5) : (tensor<f32>) -> ()
    }) {dimensions = array<i64: 3>} : (tensor<1x4x2x8xf32>, tensor<f32>) -> tensor<1x4x2xf32>
    %6 = "stablehlo.constant"() {value = dense<8.0e0> : tensor<f32>} : () -> tensor<f32>
    %7 = "stablehlo.broadcast_in_dim"(%6) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<1x4x2xf32>
    %8 = "stablehlo.divide"(%2, %7) : (tensor<1x4x2xf32>, tensor<1x4x2xf32>) -> tensor<1x4x2xf32>
    %9 = "stablehlo.constant"() {value = dense<1.0e-6> : tensor<f32>} : () -> tensor<f32>
    %10 = "stablehlo.broadcast_in_dim"(%9) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<1x4x2xf32>
    %11 = "stablehlo.add"(%8, %10) : (tensor<1x4x2xf32>, tensor<1x4x2xf32>) -> tensor<1x4x2xf32>
    %12 = "stablehlo.rsqrt"(%11) : (tensor<1x4x2xf32>) -> tensor<1x4x2xf32>
    %13 = "stablehlo.broadcast_in_dim"(%12) {broadcast_dimensions = array<i64: 0, 1, 2>} : (tensor<1x4x2xf32>) -> tensor<1x4x2x8xf32>
    %14 = "stablehlo.constant"() {value = dense<1.0e0> : tensor<f32>} : () -> tensor<f32>
    %15 = "stablehlo.broadcast_in_dim"(%14) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<8xf32>
    %16 = "stablehlo.add"(%arg1, %15) : (tensor<8xf32>, tensor<8xf32>) -> tensor<8xf32>
    %17 = "stablehlo.multiply"(%arg0, %13) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %18 = "stablehlo.broadcast_in_dim"(%16) {broadcast_dimensions = array<i64: 3>} : (tensor<8xf32>) -> tensor<1x4x2x8xf32>
    %19 = "stablehlo.multiply"(%17, %18) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %20 = "stablehlo.constant"() {value = dense<[1.0e0, 1.0e-1, 1.0e-2, 1.0e-3]> : tensor<4xf32>} : () -> tensor<4xf32>
    %21 = "stablehlo.convert"(%arg2) : (tensor<1x4xi32>) -> tensor<1x4xf32>
    %22 = "stablehlo.broadcast_in_dim"(%21) {broadcast_dimensions = array<i64: 0, 1>} : (tensor<1x4xf32>) -> tensor<1x4x4xf32>
    %23 = "stablehlo.broadcast_in_dim"(%20) {broadcast_dimensions = array<i64: 2>} : (tensor<4xf32>) -> tensor<1x4x4xf32>
    %24 = "stablehlo.multiply"(%22, %23) : (tensor<1x4x4xf32>, tensor<1x4x4xf32>) -> tensor<1x4x4xf32>
    %25 = "stablehlo.cosine"(%24) : (tensor<1x4x4xf32>) -> tensor<1x4x4xf32>
    %26 = "stablehlo.broadcast_in_dim"(%25) {broadcast_dimensions = array<i64: 0, 1, 3>} : (tensor<1x4x4xf32>) -> tensor<1x4x2x4xf32>
    %27 = "stablehlo.sine"(%24) : (tensor<1x4x4xf32>) -> tensor<1x4x4xf32>
    %28 = "stablehlo.broadcast_in_dim"(%27) {broadcast_dimensions = array<i64: 0, 1, 3>} : (tensor<1x4x4xf32>) -> tensor<1x4x2x4xf32>
    %29 = "stablehlo.slice"(%19) {start_indices = array<i64: 0, 0, 0, 0>, limit_indices = array<i64: 1, 4, 2, 4>, strides = array<i64: 1, 1, 1, 1>} : (tensor<1x4x2x8xf32>) -> tensor<1x4x2x4xf32>
    %30 = "stablehlo.slice"(%19) {start_indices = array<i64: 0, 0, 0, 4>, limit_indices = array<i64: 1, 4, 2, 8>, strides = array<i64: 1, 1, 1, 1>} : (tensor<1x4x2x8xf32>) -> tensor<1x4x2x4xf32>
    %31 = "stablehlo.multiply"(%29, %26) : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
    %32 = "stablehlo.multiply"(%30, %28) : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
    %33 = "stablehlo.subtract"(%31, %32) : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
    %34 = "stablehlo.multiply"(%30, %26) : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
    %35 = "stablehlo.multiply"(%29, %28) : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
    %36 = "stablehlo.add"(%34, %35) : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x4xf32>
    %37 = "stablehlo.concatenate"(%33, %36) {dimension = 3 : i64} : (tensor<1x4x2x4xf32>, tensor<1x4x2x4xf32>) -> tensor<1x4x2x8xf32>
    %38 = "stablehlo.multiply"(%37, %37) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %39 = "stablehlo.multiply"(%38, %37) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %40 = "stablehlo.constant"() {value = dense<4.4715e-2> : tensor<f32>} : () -> tensor<f32>
    %41 = "stablehlo.broadcast_in_dim"(%40) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<1x4x2x8xf32>
    %42 = "stablehlo.multiply"(%39, %41) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %43 = "stablehlo.add"(%37, %42) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %44 = "stablehlo.constant"() {value = dense<7.978846e-1> : tensor<f32>} : () -> tensor<f32>
    %45 = "stablehlo.broadcast_in_dim"(%44) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<1x4x2x8xf32>
    %46 = "stablehlo.multiply"(%43, %45) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %47 = "stablehlo.constant"() {value = dense<5.0e-1> : tensor<f32>} : () -> tensor<f32>
    %48 = "stablehlo.broadcast_in_dim"(%47) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<1x4x2x8xf32>
    %49 = "stablehlo.multiply"(%37, %48) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %50 = "stablehlo.tanh"(%46) : (tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %51 = "stablehlo.constant"() {value = dense<1.0e0> : tensor<f32>} : () -> tensor<f32>
    %52 = "stablehlo.broadcast_in_dim"(%51) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<1x4x2x8xf32>
    %53 = "stablehlo.add"(%50, %52) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %54 = "stablehlo.multiply"(%49, %53) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %55 = "stablehlo.iota"() {iota_dimension = 0 : i64} : () -> tensor<4x4xi32>
    %56 = "stablehlo.constant"() {value = dense<0> : tensor<i32>} : () -> tensor<i32>
    %57 = "stablehlo.broadcast_in_dim"(%56) {broadcast_dimensions = array<i64>} : (tensor<i32>) -> tensor<4x4xi32>
    %58 = "stablehlo.add"(%55, %57) : (tensor<4x4xi32>, tensor<4x4xi32>) -> tensor<4x4xi32>
    %59 = "stablehlo.iota"() {iota_dimension = 1 : i64} : () -> tensor<4x4xi32>
    %60 = "stablehlo.compare"(%59, %58) {comparison_direction = #stablehlo<comparison_direction LE>, compare_type = #stablehlo<comparison_type SIGNED>} : (tensor<4x4xi32>, tensor<4x4xi32>) -> tensor<4x4xi1>
    %61 = "stablehlo.constant"() {value = dense<0xFF800000> : tensor<f32>} : () -> tensor<f32>
    %62 = "stablehlo.reduce"(%54, %61) ({
    ^bb0(%63: tensor<f32>, %64: tensor<f32>):
      %65 = "stablehlo.maximum"(%63, %64) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%65) : (tensor<f32>) -> ()
    }) {dimensions = array<i64: 3>} : (tensor<1x4x2x8xf32>, tensor<f32>) -> tensor<1x4x2xf32>
    %66 = "stablehlo.broadcast_in_dim"(%62) {broadcast_dimensions = array<i64: 0, 1, 2>} : (tensor<1x4x2xf32>) -> tensor<1x4x2x8xf32>
    %67 = "stablehlo.subtract"(%54, %66) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %68 = "stablehlo.exponential"(%67) : (tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    %69 = "stablehlo.constant"() {value = dense<0.0e0> : tensor<f32>} : () -> tensor<f32>
    %70 = "stablehlo.reduce"(%68, %69) ({
    ^bb0(%71: tensor<f32>, %72: tensor<f32>):
      %73 = "stablehlo.add"(%71, %72) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%73) : (tensor<f32>) -> ()
    }) {dimensions = array<i64: 3>} : (tensor<1x4x2x8xf32>, tensor<f32>) -> tensor<1x4x2xf32>
    %74 = "stablehlo.broadcast_in_dim"(%70) {broadcast_dimensions = array<i64: 0, 1, 2>} : (tensor<1x4x2xf32>) -> tensor<1x4x2x8xf32>
    %75 = "stablehlo.divide"(%68, %74) : (tensor<1x4x2x8xf32>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xf32>
    "func.return"(%75, %60) : (tensor<1x4x2x8xf32>, tensor<4x4xi1>) -> ()
  }
}
