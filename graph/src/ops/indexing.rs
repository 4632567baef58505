//! Row gathers and their transpose: `gather` takes rows of a table [V, ...] at integer ids
//! [...] (an embedding lookup); `scatter_add` adds rows of updates into a table at ids.
use crate::lower::{list, Combiner, Emitter};
use crate::prim::Prim;
use crate::trace::Tensor;
use crate::types::TensorType;

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    match p {
        Prim::Gather => {
            if x.len() != 2 {
                return Err("expects a table and ids".into());
            }
            let (table, ids) = (x[0], x[1]);
            if table.rank() < 1 || !ids.dtype.is_int() {
                return Err("needs a table of rank >= 1 and integer ids".into());
            }
            let mut dims = ids.dims.clone();
            dims.extend(&table.dims[1..]);
            Ok(TensorType::new(table.dtype, &dims))
        }
        Prim::ScatterAdd => {
            if x.len() != 3 {
                return Err("expects a table, ids and updates".into());
            }
            let (table, ids, upd) = (x[0], x[1], x[2]);
            let mut want = ids.dims.clone();
            want.extend(table.dims.get(1..).unwrap_or(&[]));
            if table.rank() < 1 || !ids.dtype.is_int() || upd.dtype != table.dtype || upd.dims != want {
                return Err(format!("updates must be {} of shape {want:?} with integer ids", table.dtype));
            }
            Ok(table.clone())
        }
        _ => unreachable!("internal"),
    }
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    let (table, ids) = (&a[0].1, &a[1].1);
    let k = ids.rank();
    let window: Vec<usize> = (k..k + table.rank() - 1).collect();
    let ops = a;
    match p {
        Prim::Gather => {
            let mut sizes = vec![1i64];
            sizes.extend(&table.dims[1..]);
            let attrs = format!(
                "dimension_numbers = #stablehlo.gather<offset_dims = {}, collapsed_slice_dims = [0], \
                 start_index_map = [0], index_vector_dim = {k}>, slice_sizes = {}, indices_are_sorted = false",
                list(&window),
                crate::lower::i64_array(&sizes)
            );
            e.op("stablehlo.gather", ops, &attrs, None, out)
        }
        _ => {
            let attrs = format!(
                "scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = {}, inserted_window_dims = [0], \
                 scatter_dims_to_operand_dims = [0], index_vector_dim = {k}>, indices_are_sorted = false, unique_indices = false",
                list(&window)
            );
            e.op("stablehlo.scatter", ops, &attrs, Some((Combiner::Add, table.dtype)), out)
        }
    }
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    match p {
        Prim::Gather => {
            // The forward pass clamps ids into the table; send each row's cotangent there.
            let (ids, rows) = (&x[1], x[0].dims()[0]);
            let clamped = ids.max(&ids.scalar_like(0.0)).min(&ids.scalar_like((rows - 1) as f64));
            Ok(vec![Some(x[0].zeros_like().scatter_add(&clamped, ct)), None])
        }
        Prim::ScatterAdd => {
            // Rows with out-of-range ids were dropped: their updates get no cotangent.
            let (ids, rows, upd) = (&x[1], x[0].dims()[0], &x[2]);
            let inside = ids.ge(&ids.scalar_like(0.0)).and(&ids.lt(&ids.scalar_like(rows as f64)));
            let kept: Vec<usize> = (0..ids.rank()).collect();
            let inside = inside.broadcast_in_dim(&upd.dims(), &kept);
            let g = Tensor::select(&inside, &ct.gather(ids), &upd.scalar_like(0.0));
            Ok(vec![Some(ct.clone()), None, Some(g)])
        }
        _ => Err(()),
    }
}

impl Tensor {
    /// Rows of this table at integer `ids`: [V, D...] x ids[B...] -> [B..., D...].
    /// Out-of-range ids are clamped (as XLA does); check ids before tracing if that matters.
    #[track_caller]
    pub fn gather(&self, ids: &Tensor) -> Tensor {
        Tensor::apply(Prim::Gather, &[self, ids])
    }

    /// This table with `updates` [B..., D...] added to its rows at `ids` [B...].
    #[track_caller]
    pub fn scatter_add(&self, ids: &Tensor, updates: &Tensor) -> Tensor {
        Tensor::apply(Prim::ScatterAdd, &[self, ids, updates])
    }
}
