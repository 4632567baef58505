//! JAX's CPU linear-algebra custom calls (`lapack_<p>getrf_ffi`, ...), with faer's kernels.
//!
//! jaxlib registers these typed-FFI targets from its own LAPACK bindings when JAX starts; the
//! PJRT CPU plugin alone has none, so a JAX program using `jnp.linalg` fails to compile there.
//! [`register`] gives the plugin ours. Each follows the interface of JAX 0.10's lowering rules
//! and jaxlib's kernels exactly: the same operands and results (matrices column-major, as the
//! custom call's layouts ask; leading dimensions are a batch), the same attributes (`uplo`,
//! `side`, `trans_x`, `diag`, `mode` as ASCII codes in `u8`), LAPACK's output conventions
//! (1-based pivots, `info` per matrix, untouched triangles) so that the rest of JAX's program,
//! which checks `info` and masks failures with NaN, gives the same answers.
//!
//! Where the answer is not unique, ours can differ from LAPACK's as JAX users already allow
//! for: the signs of QR and SVD vectors, eigenvector signs/phases, and for complex QR the phase
//! of each Householder reflector (faer makes R's diagonal complex where LAPACK makes it real).
use dtype::DType;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::triangular_solve as tri;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use xla_sys::ffi::{register_handler, FfiArg, FfiAttr, FfiCall, FfiHandler, FfiRet};

type R<T> = std::result::Result<T, String>;
/// A Schur decomposition: T, Z and the eigenvalues in T's order.
type Schur<T> = (Mat<T>, Mat<T>, Vec<<T as Elem>::C>);
/// Eigenvalues and eigenvectors (columns).
type Eigen<C> = (Vec<C>, Mat<C>);

/// An element type the kernels take: f32, f64, and faer's c32, c64 (XLA's c64, c128).
trait Elem:
    faer::traits::ComplexField<Real = Self::Re>
    + Copy
    + PartialEq
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::MulAssign
    + std::ops::SubAssign
    + 'static
{
    type Re: Elem;
    /// The complex type of the same precision.
    type C: Elem<Re = Self::Re>;
    const TYPE: DType;
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
    fn finite(self) -> bool;
    fn conj_(self) -> Self;
    fn real(self) -> Self::Re;
    fn from_real(r: Self::Re) -> Self;
    fn imag(self) -> Self::Re;
    /// The value of this type nearest `c` (its real part for real types).
    fn from_complex(c: Self::C) -> Self;
    /// |x|^2.
    fn abs_sq(self) -> f64;
    /// x * f.
    fn scale(self, f: f64) -> Self;
    /// faer's eigendecomposition: eigenvalues and right eigenvectors (complex).
    fn eigen(m: MatRef<'_, Self>) -> Option<Eigen<Self::C>>;
    fn inverse(m: MatRef<'_, Self>) -> Mat<Self>;
    /// nalgebra's Schur decomposition A = Z T Z^H (T quasi-triangular for real types) and the
    /// eigenvalues on T's diagonal blocks, or None when the iteration does not converge.
    fn schur(m: MatRef<'_, Self>) -> Option<Schur<Self>>;
    /// |re| + |im|, LAPACK's pivot measure.
    fn abs1(self) -> f64;
    fn zero() -> Self {
        <Self as faer::traits::ComplexField>::zero_impl()
    }
    fn one() -> Self {
        <Self as faer::traits::ComplexField>::one_impl()
    }
    fn recip(self) -> Self {
        <Self as faer::traits::ComplexField>::recip_impl(&self)
    }
}

macro_rules! real_elem {
    ($t:ty, $c:ty, $ty:expr) => {
        impl Elem for $t {
            type Re = $t;
            type C = $c;
            const TYPE: DType = $ty;
            fn load(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b[..std::mem::size_of::<$t>()].try_into().unwrap())
            }
            fn store(self, b: &mut [u8]) {
                b[..std::mem::size_of::<$t>()].copy_from_slice(&self.to_le_bytes())
            }
            fn finite(self) -> bool {
                self.is_finite()
            }
            fn conj_(self) -> Self {
                self
            }
            fn real(self) -> $t {
                self
            }
            fn from_real(r: $t) -> Self {
                r
            }
            fn imag(self) -> $t {
                0.0
            }
            fn from_complex(c: $c) -> Self {
                c.re
            }
            fn abs_sq(self) -> f64 {
                (self as f64) * (self as f64)
            }
            fn scale(self, f: f64) -> Self {
                ((self as f64) * f) as $t
            }
            fn eigen(m: MatRef<'_, Self>) -> Option<Eigen<Self::C>> {
                let e = m.eigen().ok()?;
                Some(((0..m.nrows()).map(|i| e.S()[i]).collect(), e.U().to_owned()))
            }
            fn inverse(m: MatRef<'_, Self>) -> Mat<Self> {
                use faer::linalg::solvers::DenseSolveCore;
                m.partial_piv_lu().inverse()
            }
            fn schur(m: MatRef<'_, Self>) -> Option<Schur<Self>> {
                let n = m.nrows();
                let dm = nalgebra::DMatrix::<$t>::from_fn(n, n, |i, j| m[(i, j)]);
                let sch = nalgebra::Schur::try_new(dm, <$t>::EPSILON, schur_iterations(n))?;
                let w = sch.complex_eigenvalues().iter().copied().collect();
                let (q, t) = sch.unpack();
                Some((Mat::from_fn(n, n, |i, j| t[(i, j)]), Mat::from_fn(n, n, |i, j| q[(i, j)]), w))
            }
            fn abs1(self) -> f64 {
                (self as f64).abs()
            }
        }
    };
}
real_elem!(f32, faer::c32, DType::F32);
real_elem!(f64, faer::c64, DType::F64);

macro_rules! complex_elem {
    ($t:ty, $re:ty, $ty:expr) => {
        impl Elem for $t {
            type Re = $re;
            type C = $t;
            const TYPE: DType = $ty;
            fn load(b: &[u8]) -> Self {
                let h = std::mem::size_of::<$re>();
                <$t>::new(<$re>::load(&b[..h]), <$re>::load(&b[h..]))
            }
            fn store(self, b: &mut [u8]) {
                let h = std::mem::size_of::<$re>();
                self.re.store(&mut b[..h]);
                self.im.store(&mut b[h..]);
            }
            fn finite(self) -> bool {
                self.re.is_finite() && self.im.is_finite()
            }
            fn conj_(self) -> Self {
                self.conj()
            }
            fn real(self) -> $re {
                self.re
            }
            fn from_real(r: $re) -> Self {
                <$t>::new(r, 0.0)
            }
            fn imag(self) -> $re {
                self.im
            }
            fn from_complex(c: $t) -> Self {
                c
            }
            fn abs_sq(self) -> f64 {
                (self.re as f64) * (self.re as f64) + (self.im as f64) * (self.im as f64)
            }
            fn scale(self, f: f64) -> Self {
                <$t>::new(((self.re as f64) * f) as $re, ((self.im as f64) * f) as $re)
            }
            fn eigen(m: MatRef<'_, Self>) -> Option<Eigen<Self::C>> {
                let e = m.eigen().ok()?;
                Some(((0..m.nrows()).map(|i| e.S()[i]).collect(), e.U().to_owned()))
            }
            fn inverse(m: MatRef<'_, Self>) -> Mat<Self> {
                use faer::linalg::solvers::DenseSolveCore;
                m.partial_piv_lu().inverse()
            }
            fn schur(m: MatRef<'_, Self>) -> Option<Schur<Self>> {
                let n = m.nrows();
                let dm = nalgebra::DMatrix::<$t>::from_fn(n, n, |i, j| m[(i, j)]);
                let sch = nalgebra::Schur::try_new(dm, <$re>::EPSILON, schur_iterations(n))?;
                let (q, t) = sch.unpack();
                let w = (0..n).map(|i| t[(i, i)]).collect();
                Some((Mat::from_fn(n, n, |i, j| t[(i, j)]), Mat::from_fn(n, n, |i, j| q[(i, j)]), w))
            }
            fn abs1(self) -> f64 {
                (self.re as f64).abs() + (self.im as f64).abs()
            }
        }
    };
}
complex_elem!(faer::c32, f32, DType::C64);
complex_elem!(faer::c64, f64, DType::C128);

/// nalgebra's limit on QR sweeps (LAPACK's hseqr allows 30 per eigenvalue, at least 300).
fn schur_iterations(n: usize) -> usize {
    30usize.saturating_mul(n.max(10)).saturating_mul(n.max(1))
}

/// The targets we provide, as JAX names them: `lapack_` + s/d/c/z + routine + `_ffi`.
pub fn targets() -> Vec<String> {
    let mut out = Vec::new();
    for (routines, prefixes) in [
        (&["getrf", "geqrf", "geqp3", "potrf", "trsm", "gesdd", "gesvd", "geev", "gees", "gehrd", "gtsv"][..], &["s", "d", "c", "z"][..]),
        (&["orgqr", "ormqr", "syevd"][..], &["s", "d"][..]),
        (&["ungqr", "unmqr", "heevd"][..], &["c", "z"][..]),
    ] {
        for r in routines {
            for p in prefixes {
                out.push(format!("lapack_{p}{r}_ffi"));
            }
        }
    }
    out.sort();
    out
}

/// Registers every target of [`targets`] with the plugin behind `api` for the host platform.
pub fn register(api: &xla_sys::Api) -> xla_sys::Result<()> {
    for name in targets() {
        let routine = &name["lapack_".len() + 1..name.len() - "_ffi".len()];
        match routine {
            "getrf" => register_handler::<Getrf>(api, &name, "Host")?,
            "geqrf" => register_handler::<Geqrf>(api, &name, "Host")?,
            "orgqr" | "ungqr" => register_handler::<Orgqr>(api, &name, "Host")?,
            "potrf" => register_handler::<Potrf>(api, &name, "Host")?,
            "trsm" => register_handler::<Trsm>(api, &name, "Host")?,
            "syevd" | "heevd" => register_handler::<Syevd>(api, &name, "Host")?,
            "gesdd" | "gesvd" => register_handler::<Gesdd>(api, &name, "Host")?,
            "geqp3" => register_handler::<Geqp3>(api, &name, "Host")?,
            "ormqr" | "unmqr" => register_handler::<Ormqr>(api, &name, "Host")?,
            "geev" => register_handler::<Geev>(api, &name, "Host")?,
            "gehrd" => register_handler::<Gehrd>(api, &name, "Host")?,
            "gtsv" => register_handler::<Gtsv>(api, &name, "Host")?,
            "gees" => register_handler::<Gees>(api, &name, "Host")?,
            other => unreachable!("no handler for {other}"),
        }
    }
    Ok(())
}

/// Calls `$f::<T>` for the element type of operand 0.
macro_rules! by_type {
    ($call:expr, $name:literal, $f:ident) => {{
        let call: &mut FfiCall<'_> = $call;
        let t = call.args.first().ok_or_else(|| format!("{}: no operands", $name))?.dtype;
        match t {
            DType::F32 => $f::<f32>(call),
            DType::F64 => $f::<f64>(call),
            DType::C64 => $f::<faer::c32>(call),
            DType::C128 => $f::<faer::c64>(call),
            other => Err(format!("{}: unsupported element type {}", $name, other.name())),
        }
    }};
}

/// A handler type `$name` whose `execute` is `$f::<T>` for the element type of operand 0.
macro_rules! handler {
    ($name:ident, $label:literal, $f:ident) => {
        struct $name;
        impl FfiHandler for $name {
            fn execute(call: &mut FfiCall<'_>) -> R<()> {
                by_type!(call, $label, $f)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Reading and writing batches of column-major matrices.

/// A batch of `count` column-major `rows x cols` matrices (the last two dimensions of `dims`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shape {
    count: usize,
    rows: usize,
    cols: usize,
}

fn usize_dim(d: i64) -> R<usize> {
    usize::try_from(d).map_err(|_| format!("negative dimension {d}"))
}

fn batch_of(dims: &[i64], inner: usize, what: &str) -> R<(usize, Vec<usize>)> {
    if dims.len() < inner {
        return Err(format!("{what} has rank {}, expected at least {inner}", dims.len()));
    }
    let (batch, rest) = dims.split_at(dims.len() - inner);
    let mut count = 1usize;
    for &d in batch {
        count = count.checked_mul(usize_dim(d)?).ok_or_else(|| format!("{what}: batch overflows"))?;
    }
    Ok((count, rest.iter().map(|&d| usize_dim(d)).collect::<R<_>>()?))
}

fn matrix_shape(dims: &[i64], what: &str) -> R<Shape> {
    let (count, rc) = batch_of(dims, 2, what)?;
    Ok(Shape { count, rows: rc[0], cols: rc[1] })
}

fn check_type<T: Elem>(dtype: DType, what: &str) -> R<()> {
    if dtype != T::TYPE {
        return Err(format!("{what} is {}, expected {}", dtype.name(), T::TYPE.name()));
    }
    Ok(())
}

fn arg_matrices<T: Elem>(arg: &FfiArg<'_>, what: &str) -> R<(Shape, Vec<Mat<T>>)> {
    check_type::<T>(arg.dtype, what)?;
    let s = matrix_shape(arg.dims, what)?;
    let size = T::TYPE.size_bytes();
    let bytes = arg.bytes();
    let per = s.rows * s.cols;
    let mats = (0..s.count).map(|b| Mat::from_fn(s.rows, s.cols, |i, j| T::load(&bytes[(b * per + j * s.rows + i) * size..]))).collect();
    Ok((s, mats))
}

fn arg_vectors<T: Elem>(arg: &FfiArg<'_>, what: &str) -> R<(usize, usize, Vec<T>)> {
    check_type::<T>(arg.dtype, what)?;
    let (count, n) = batch_of(arg.dims, 1, what)?;
    let size = T::TYPE.size_bytes();
    let values = arg.bytes().chunks_exact(size).map(T::load).collect();
    Ok((count, n[0], values))
}

/// Checks that result `ret` has element type `dtype` and dimensions `dims`.
fn check_ret(ret: &FfiRet<'_>, dtype: DType, dims: &[usize], what: &str) -> R<()> {
    let have: Vec<usize> = ret.dims.iter().map(|&d| usize_dim(d)).collect::<R<_>>()?;
    if ret.dtype != dtype || have != dims {
        return Err(format!("{what} is {}{:?}, expected {}{:?}", ret.dtype.name(), have, dtype.name(), dims));
    }
    Ok(())
}

/// Checks that result `ret` has operand `arg`'s element type and dimensions (a result that
/// takes the operand's place).
fn check_ret_like(ret: &FfiRet<'_>, arg: &FfiArg<'_>, what: &str) -> R<()> {
    let dims: Vec<usize> = arg.dims.iter().map(|&d| usize_dim(d)).collect::<R<_>>()?;
    check_ret(ret, arg.dtype, &dims, what)
}

/// Writes one matrix per batch index into `ret`.
fn store_matrices<T: Elem>(ret: &mut FfiRet<'_>, mats: &[Mat<T>]) {
    for (b, m) in mats.iter().enumerate() {
        store_matrix(ret, b, m.as_ref());
    }
}

fn with_batch(batch: &[i64], inner: &[usize]) -> R<Vec<usize>> {
    let mut v: Vec<usize> = batch.iter().map(|&d| usize_dim(d)).collect::<R<_>>()?;
    v.extend_from_slice(inner);
    Ok(v)
}

fn store_matrix<T: Elem>(ret: &mut FfiRet<'_>, index: usize, m: MatRef<'_, T>) {
    let size = T::TYPE.size_bytes();
    let per = m.nrows() * m.ncols();
    let bytes = ret.bytes_mut();
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            m[(i, j)].store(&mut bytes[(index * per + j * m.nrows() + i) * size..]);
        }
    }
}

fn store_values<T: Elem>(ret: &mut FfiRet<'_>, index: usize, values: &[T]) {
    let size = T::TYPE.size_bytes();
    let bytes = ret.bytes_mut();
    for (k, v) in values.iter().enumerate() {
        v.store(&mut bytes[(index * values.len() + k) * size..]);
    }
}

fn store_i32(ret: &mut FfiRet<'_>, index: usize, values: &[i32]) {
    let bytes = ret.bytes_mut();
    for (k, v) in values.iter().enumerate() {
        let at = (index * values.len() + k) * 4;
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn ascii_attr(call: &FfiCall<'_>, name: &str, allowed: &[u8], target: &str) -> R<u8> {
    match call.attr(name) {
        Some(FfiAttr::Int(v)) if u8::try_from(*v).is_ok_and(|c| allowed.contains(&c)) => Ok(*v as u8),
        Some(other) => Err(format!(
            "{target}: attribute {name} = {other:?}, expected one of {}",
            allowed.iter().map(|&c| format!("'{}'", c as char)).collect::<Vec<_>>().join(", ")
        )),
        None => Err(format!("{target}: missing attribute {name}")),
    }
}

fn expect_counts(call: &FfiCall<'_>, args: usize, rets: usize, target: &str) -> R<()> {
    if call.args.len() != args || call.rets.len() != rets {
        return Err(format!("{target}: {} operands and {} results, expected {args} and {rets}", call.args.len(), call.rets.len()));
    }
    Ok(())
}

/// `f` over the matrices of a batch, on up to as many threads as the machine has cores (a
/// batched custom call is one call; LAPACK under JAX also spreads a batch over threads).
fn par_map<I: Send, O: Send>(items: Vec<I>, f: impl Fn(I) -> O + Sync) -> Vec<O> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<I>> = Vec::with_capacity(threads);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(per).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks.into_iter().map(|c| scope.spawn(move || c.into_iter().map(f).collect::<Vec<O>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

fn all_finite<T: Elem>(m: MatRef<'_, T>) -> bool {
    (0..m.ncols()).all(|j| (0..m.nrows()).all(|i| m[(i, j)].finite()))
}

fn hermitian_from<T: Elem>(a: &Mat<T>, lower: bool) -> Mat<T> {
    let n = a.nrows();
    Mat::from_fn(n, n, |i, j| {
        let take_direct = if lower { i >= j } else { i <= j };
        if take_direct {
            if i == j {
                T::from_real(a[(i, i)].real())
            } else {
                a[(i, j)]
            }
        } else {
            a[(j, i)].conj_()
        }
    })
}

// ---------------------------------------------------------------------------------------------
// getrf: LU with partial pivoting. Results: the factors, 1-based pivots (LAPACK's row
// interchanges), info (the 1-based index of the first exactly zero pivot, else 0).

handler!(Getrf, "getrf", getrf);

fn getrf<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 1, 3, "getrf")?;
    let (s, mats) = arg_matrices::<T>(&call.args[0], "getrf operand")?;
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    let k = s.rows.min(s.cols);
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[s.rows, s.cols])?, "getrf result 0")?;
    check_ret(&call.rets[1], DType::S32, &with_batch(batch, &[k])?, "getrf pivots")?;
    check_ret(&call.rets[2], DType::S32, &with_batch(batch, &[])?, "getrf info")?;
    let results = par_map(mats, |a| {
        let (lu, pivots) = lu_factor(a);
        let info = (0..k).find(|&i| lu[(i, i)] == T::zero()).map_or(0, |i| i as i32 + 1);
        (lu, pivots, info)
    });
    for (b, (lu, pivots, info)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, lu.as_ref());
        store_i32(&mut call.rets[1], b, &pivots);
        store_i32(&mut call.rets[2], b, &[info]);
    }
    Ok(())
}

/// LU of `a` with 1-based LAPACK pivots.
fn lu_factor<T: Elem>(a: Mat<T>) -> (Mat<T>, Vec<i32>) {
    let (m, n) = (a.nrows(), a.ncols());
    let finite = all_finite(a.as_ref());
    let mut lu = a.clone();
    let mut perm = vec![0usize; m];
    let mut perm_inv = vec![0usize; m];
    let params = Default::default();
    let mut mem = MemBuffer::new(faer::linalg::lu::partial_pivoting::factor::lu_in_place_scratch::<usize, T>(m, n, Par::Seq, params));
    faer::linalg::lu::partial_pivoting::factor::lu_in_place(
        lu.as_mut(),
        &mut perm,
        &mut perm_inv,
        Par::Seq,
        MemStack::new(&mut mem),
        params,
    );
    if finite && !all_finite(lu.as_ref()) {
        // faer divides by an exactly zero pivot (a column that is zero from the diagonal
        // down); LAPACK leaves that column as it is and goes on. Only then, eliminate as
        // LAPACK's unblocked getf2 does.
        return lu_zero_pivots(a);
    }
    // faer gives the final row order; LAPACK the interchange made at each step. Replay the
    // order as interchanges: step i brings row perm[i] (wherever it now is) to position i.
    let k = m.min(n);
    let mut at: Vec<usize> = (0..m).collect(); // at[r]: position of original row r
    let mut row: Vec<usize> = (0..m).collect(); // row[p]: original row at position p
    let mut pivots = Vec::with_capacity(k);
    for (i, &target) in perm.iter().enumerate().take(k) {
        let j = at[target];
        pivots.push(j as i32 + 1);
        let other = row[i];
        row.swap(i, j);
        at[target] = i;
        at[other] = j;
    }
    (lu, pivots)
}

/// Unblocked elimination with partial pivoting that skips zero pivots, as LAPACK's getf2 does
/// (the pivot is the first entry of largest |re| + |im|).
fn lu_zero_pivots<T: Elem>(mut a: Mat<T>) -> (Mat<T>, Vec<i32>) {
    let (m, n) = (a.nrows(), a.ncols());
    let k = m.min(n);
    let mut pivots = Vec::with_capacity(k);
    for j in 0..k {
        let mut p = j;
        let mut best = a[(j, j)].abs1();
        for i in j + 1..m {
            let v = a[(i, j)].abs1();
            if v > best {
                best = v;
                p = i;
            }
        }
        pivots.push(p as i32 + 1);
        if a[(p, j)] != T::zero() {
            if p != j {
                for c in 0..n {
                    let t = a[(j, c)];
                    a[(j, c)] = a[(p, c)];
                    a[(p, c)] = t;
                }
            }
            let inv = a[(j, j)].recip();
            for i in j + 1..m {
                a[(i, j)] *= inv;
            }
        }
        for c in j + 1..n {
            let u = a[(j, c)];
            for i in j + 1..m {
                let l = a[(i, j)];
                a[(i, c)] -= l * u;
            }
        }
    }
    (a, pivots)
}

// ---------------------------------------------------------------------------------------------
// potrf: Cholesky of the `uplo` triangle; the other triangle is left as it was. info > 0 is
// the order of the leading minor that is not positive definite.

handler!(Potrf, "potrf", potrf);

fn potrf<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 1, 2, "potrf")?;
    let lower = ascii_attr(call, "uplo", b"LU", "potrf")? == b'L';
    let (s, mats) = arg_matrices::<T>(&call.args[0], "potrf operand")?;
    if s.rows != s.cols {
        return Err(format!("potrf: matrices are {}x{}, expected square", s.rows, s.cols));
    }
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[s.rows, s.cols])?, "potrf result 0")?;
    check_ret(&call.rets[1], DType::S32, &with_batch(batch, &[])?, "potrf info")?;
    let n = s.rows;
    let results = par_map(mats, |a| {
        // faer reads only the `side` triangle (and the real part of the diagonal), as LAPACK.
        let side = if lower { Side::Lower } else { Side::Upper };
        let factored = a.as_ref().llt(side);
        let mut out = a.clone();
        let info = match factored {
            Ok(llt) => {
                let l = llt.L();
                for j in 0..n {
                    for i in j..n {
                        if lower {
                            out[(i, j)] = l[(i, j)];
                        } else {
                            out[(j, i)] = l[(i, j)].conj_();
                        }
                    }
                }
                0
            }
            Err(faer::linalg::solvers::LltError::NonPositivePivot { index }) => index as i32 + 1,
        };
        (out, info)
    });
    for (b, (out, info)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, out.as_ref());
        store_i32(&mut call.rets[1], b, &[info]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// trsm: solves op(A) X = B (side 'L') or X op(A) = B (side 'R') with A triangular (uplo), op
// = trans_x ('N', 'T', 'C'), diag 'U' for a unit diagonal (not read). Operands: A, B.

handler!(Trsm, "trsm", trsm);

fn trsm<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 2, 1, "trsm")?;
    let left = ascii_attr(call, "side", b"LR", "trsm")? == b'L';
    let lower = ascii_attr(call, "uplo", b"LU", "trsm")? == b'L';
    let trans = ascii_attr(call, "trans_x", b"NTC", "trsm")?;
    let unit = ascii_attr(call, "diag", b"UN", "trsm")? == b'U';
    let (sa, a_mats) = arg_matrices::<T>(&call.args[0], "trsm operand 0 (A)")?;
    let (sb, b_mats) = arg_matrices::<T>(&call.args[1], "trsm operand 1 (B)")?;
    let k = if left { sb.rows } else { sb.cols };
    if sa.rows != sa.cols || sa.rows != k {
        return Err(format!("trsm: A is {}x{}, B is {}x{} (side {})", sa.rows, sa.cols, sb.rows, sb.cols, if left { 'L' } else { 'R' }));
    }
    if sa.count != sb.count && sa.count != 1 {
        return Err(format!("trsm: {} matrices A for {} right-hand sides", sa.count, sb.count));
    }
    check_ret_like(&call.rets[0], &call.args[1], "trsm result")?;
    let solved = par_map(b_mats.into_iter().enumerate().collect(), |(b, mut x): (usize, Mat<T>)| {
        let a = &a_mats[if sa.count == 1 { 0 } else { b }];
        // op(A), and whether it is lower triangular.
        let adjoint;
        let (op, op_lower): (MatRef<'_, T>, bool) = match trans {
            b'N' => (a.as_ref(), lower),
            b'T' => (a.as_ref().transpose(), !lower),
            _ => {
                adjoint = Mat::from_fn(a.ncols(), a.nrows(), |i, j| a[(j, i)].conj_());
                (adjoint.as_ref(), !lower)
            }
        };
        // X op(A) = B  <=>  op(A)^T X^T = B^T.
        let (tri_m, tri_lower, rhs): (MatRef<'_, T>, bool, MatMut<'_, T>) =
            if left { (op, op_lower, x.as_mut()) } else { (op.transpose(), !op_lower, x.as_mut().transpose_mut()) };
        match (tri_lower, unit) {
            (true, false) => tri::solve_lower_triangular_in_place(tri_m, rhs, Par::Seq),
            (true, true) => tri::solve_unit_lower_triangular_in_place(tri_m, rhs, Par::Seq),
            (false, false) => tri::solve_upper_triangular_in_place(tri_m, rhs, Par::Seq),
            (false, true) => tri::solve_unit_upper_triangular_in_place(tri_m, rhs, Par::Seq),
        }
        x
    });
    store_matrices(&mut call.rets[0], &solved);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// geqrf: Householder QR in LAPACK's storage: R on and above the diagonal, the reflectors' tails
// below it (unit first entry implied), tau such that H_i = I - tau_i v_i v_i^H.

handler!(Geqrf, "geqrf", geqrf);

fn geqrf<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 1, 2, "geqrf")?;
    let (s, mats) = arg_matrices::<T>(&call.args[0], "geqrf operand")?;
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    let k = s.rows.min(s.cols);
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[s.rows, s.cols])?, "geqrf result 0")?;
    check_ret(&call.rets[1], T::TYPE, &with_batch(batch, &[k])?, "geqrf taus")?;
    use faer::linalg::qr::no_pivoting::factor as qr;
    let results = par_map(mats, |mut a| {
        let mut taus = Vec::new();
        if k > 0 {
            let bs = qr::recommended_block_size::<T>(s.rows, s.cols);
            let mut coeff = Mat::<T>::zeros(bs, k);
            let params = Default::default();
            let mut mem = MemBuffer::new(qr::qr_in_place_scratch::<T>(s.rows, s.cols, bs, Par::Seq, params));
            qr::qr_in_place(a.as_mut(), coeff.as_mut(), Par::Seq, MemStack::new(&mut mem), params);
            taus = lapack_taus(coeff.as_ref());
        }
        (a, taus)
    });
    for (b, (a, taus)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, a.as_ref());
        store_values(&mut call.rets[1], b, &taus);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// orgqr/ungqr: the first n columns of Q = H_1 ... H_k from geqrf's storage (operands: the
// reflectors, tau), for any reflectors and taus, as LAPACK's org2r/ung2r.

handler!(Orgqr, "orgqr", orgqr);

fn orgqr<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 2, 1, "orgqr")?;
    let (s, mats) = arg_matrices::<T>(&call.args[0], "orgqr operand 0")?;
    let (count, k, taus) = arg_vectors::<T>(&call.args[1], "orgqr operand 1 (tau)")?;
    if count != s.count || k > s.cols || s.cols > s.rows {
        return Err(format!("orgqr: {} matrices of {}x{} with {count} x {k} taus (need m >= n >= k)", s.count, s.rows, s.cols));
    }
    check_ret_like(&call.rets[0], &call.args[0], "orgqr result")?;
    let (m, n) = (s.rows, s.cols);
    let results = par_map(mats.into_iter().enumerate().collect(), |(b, a): (usize, Mat<T>)| {
        // Q = H_1 (... (H_k I)); H_i leaves the first i columns (unit vectors above its
        // reach) as they are.
        let mut q = Mat::<T>::from_fn(m, n, |i, j| if i == j { T::one() } else { T::zero() });
        for i in (0..k).rev() {
            apply_reflector(&a, i, taus[b * k + i], q.as_mut(), true);
        }
        q
    });
    store_matrices(&mut call.rets[0], &results);
    Ok(())
}

/// Applies H = I - tau v v^H, v = [0 (i entries); 1; a[i+1.., i]] (reflector i of geqrf's
/// storage `a`), to `c` from the left (H C) or the right (C H), as LAPACK's larf.
fn apply_reflector<T: Elem>(a: &Mat<T>, i: usize, tau: T, mut c: MatMut<'_, T>, left: bool) {
    let len = a.nrows() - i;
    let mut v = Mat::<T>::zeros(len, 1);
    v[(0, 0)] = T::one();
    for r in 1..len {
        v[(r, 0)] = a[(i + r, i)];
    }
    if left {
        // C[i.., :] -= tau v (v^H C[i.., :])
        let cols = c.ncols();
        let mut block = c.rb_mut().submatrix_mut(i, 0, len, cols);
        let mut w = Mat::<T>::zeros(1, cols);
        faer::linalg::matmul::matmul(w.as_mut(), Accum::Replace, v.as_ref().adjoint(), block.rb(), T::one(), Par::Seq);
        faer::linalg::matmul::matmul(block.rb_mut(), Accum::Add, v.as_ref(), w.as_ref(), -tau, Par::Seq);
    } else {
        // C[:, i..] -= tau (C[:, i..] v) v^H
        let rows = c.nrows();
        let mut block = c.rb_mut().submatrix_mut(0, i, rows, len);
        let mut w = Mat::<T>::zeros(rows, 1);
        faer::linalg::matmul::matmul(w.as_mut(), Accum::Replace, block.rb(), v.as_ref(), T::one(), Par::Seq);
        faer::linalg::matmul::matmul(block.rb_mut(), Accum::Add, w.as_ref(), v.as_ref().adjoint(), -tau, Par::Seq);
    }
}

use faer::reborrow::{Reborrow, ReborrowMut};

// ---------------------------------------------------------------------------------------------
// syevd/heevd: eigenvalues (ascending) and, with mode 'V', eigenvectors (columns) of the
// Hermitian matrix given by its `uplo` triangle. Results: vectors, values, info.

handler!(Syevd, "syevd", syevd);

fn syevd<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 1, 3, "syevd")?;
    let vectors = ascii_attr(call, "mode", b"VN", "syevd")? == b'V';
    let lower = ascii_attr(call, "uplo", b"LU", "syevd")? == b'L';
    let (s, mats) = arg_matrices::<T>(&call.args[0], "syevd operand")?;
    if s.rows != s.cols {
        return Err(format!("syevd: matrices are {}x{}, expected square", s.rows, s.cols));
    }
    let n = s.rows;
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[n, n])?, "syevd result 0")?;
    check_ret(&call.rets[1], <T::Re as Elem>::TYPE, &with_batch(batch, &[n])?, "syevd eigenvalues")?;
    check_ret(&call.rets[2], DType::S32, &with_batch(batch, &[])?, "syevd info")?;
    let results = par_map(mats, |a| {
        let h = hermitian_from(&a, lower);
        if !all_finite(h.as_ref()) {
            (a, vec![<T::Re as Elem>::zero(); n], 1)
        } else if vectors {
            match h.as_ref().self_adjoint_eigen(Side::Lower) {
                Ok(e) => {
                    let w = (0..n).map(|i| e.S()[i].real()).collect();
                    (e.U().to_owned(), w, 0)
                }
                Err(_) => (a, vec![<T::Re as Elem>::zero(); n], 1),
            }
        } else {
            match h.as_ref().self_adjoint_eigenvalues(Side::Lower) {
                Ok(w) => (a, w, 0),
                Err(_) => (a, vec![<T::Re as Elem>::zero(); n], 1),
            }
        }
    });
    for (b, (v, w, info)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, v.as_ref());
        store_values(&mut call.rets[1], b, &w);
        store_i32(&mut call.rets[2], b, &[info]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gesdd/gesvd: singular values (descending) and, by mode, U and V^H: 'A' all columns/rows,
// 'S' the first min(m, n), 'N' none (U and V^H are then left zero). Results: the operand's
// workspace (LAPACK overwrites it; we return it unchanged), s, u, vt, info.

handler!(Gesdd, "gesdd", gesdd);

fn gesdd<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 1, 5, "gesdd")?;
    let mode = ascii_attr(call, "mode", b"ASN", "gesdd")?;
    let (s, mats) = arg_matrices::<T>(&call.args[0], "gesdd operand")?;
    let (m, n) = (s.rows, s.cols);
    let k = m.min(n);
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    let (ucols, vtrows) = if mode == b'A' { (m, n) } else { (k, k) };
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[m, n])?, "gesdd result 0")?;
    check_ret(&call.rets[1], <T::Re as Elem>::TYPE, &with_batch(batch, &[k])?, "gesdd singular values")?;
    if mode != b'N' {
        check_ret(&call.rets[2], T::TYPE, &with_batch(batch, &[m, ucols])?, "gesdd U")?;
        check_ret(&call.rets[3], T::TYPE, &with_batch(batch, &[vtrows, n])?, "gesdd V^H")?;
    }
    check_ret(&call.rets[4], DType::S32, &with_batch(batch, &[])?, "gesdd info")?;
    let u_shape = matrix_shape(call.rets[2].dims, "gesdd U")?;
    let vt_shape = matrix_shape(call.rets[3].dims, "gesdd V^H")?;
    let zero_re = <T::Re as Elem>::zero();
    let results = par_map(mats, |a| {
        let mut u = Mat::<T>::zeros(u_shape.rows, u_shape.cols);
        let mut vt = Mat::<T>::zeros(vt_shape.rows, vt_shape.cols);
        let mut sv = vec![zero_re; k];
        let mut info = 0;
        if !all_finite(a.as_ref()) {
            info = 1;
        } else if mode == b'N' {
            match a.as_ref().singular_values() {
                Ok(v) => sv = v,
                Err(_) => info = 1,
            }
        } else {
            let svd = if mode == b'A' { a.as_ref().svd() } else { a.as_ref().thin_svd() };
            match svd {
                Ok(d) => {
                    sv = (0..k).map(|i| d.S()[i].real()).collect();
                    u = d.U().to_owned();
                    vt = d.V().adjoint().to_owned();
                }
                Err(_) => info = 1,
            }
        }
        (a, sv, u, vt, info)
    });
    for (b, (a, sv, u, vt, info)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, a.as_ref());
        store_values(&mut call.rets[1], b, &sv);
        // Zeros of the results' shapes, or faer's factors of the shapes checked above.
        store_matrix(&mut call.rets[2], b, u.as_ref());
        store_matrix(&mut call.rets[3], b, vt.as_ref());
        store_i32(&mut call.rets[4], b, &[info]);
    }
    Ok(())
}

/// LAPACK's tau from faer's block Householder factor `coeff` (block size = its rows): faer's
/// reflector i is I - v v^H / t with t on the diagonal of its block; LAPACK's tau is 1 / t.
fn lapack_taus<T: Elem>(coeff: MatRef<'_, T>) -> Vec<T> {
    let bs = coeff.nrows();
    (0..coeff.ncols()).map(|i| coeff[(i % bs, i)].recip()).collect()
}

// ---------------------------------------------------------------------------------------------
// geqp3: QR with column pivoting. Operands: A, jpvt (all zero: every column free; LAPACK's
// preset leading columns are not supported). Results: geqrf's storage, jpvt (1-based: column j
// of A P is column jpvt[j] of A), tau.

handler!(Geqp3, "geqp3", geqp3);

fn geqp3<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 2, 3, "geqp3")?;
    let (s, mats) = arg_matrices::<T>(&call.args[0], "geqp3 operand 0")?;
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    let (m, n) = (s.rows, s.cols);
    let k = m.min(n);
    if call.args[1].dtype != DType::S32 {
        return Err(format!("geqp3 operand 1 (jpvt) is {}, expected s32", call.args[1].dtype.name()));
    }
    if call.args[1].dims.iter().map(|&d| usize_dim(d)).collect::<R<Vec<_>>>()? != with_batch(batch, &[n])? {
        return Err(format!("geqp3 operand 1 (jpvt) has dimensions {:?}, expected the batch then {n}", call.args[1].dims));
    }
    if call.args[1].bytes().iter().any(|&b| b != 0) {
        return Err("geqp3: preset pivot columns (jpvt != 0) are not supported; JAX's qr(pivoting=True) passes zeros".into());
    }
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[m, n])?, "geqp3 result 0")?;
    check_ret(&call.rets[1], DType::S32, &with_batch(batch, &[n])?, "geqp3 jpvt")?;
    check_ret(&call.rets[2], T::TYPE, &with_batch(batch, &[k])?, "geqp3 taus")?;
    use faer::linalg::qr::col_pivoting::factor as qr;
    let results = par_map(mats, |mut a| {
        let mut perm = vec![0usize; n];
        let mut perm_inv = vec![0usize; n];
        let mut taus = Vec::new();
        if k > 0 {
            let bs = qr::recommended_block_size::<T>(m, n);
            let mut coeff = Mat::<T>::zeros(bs, k);
            let params = Default::default();
            let mut mem = MemBuffer::new(qr::qr_in_place_scratch::<usize, T>(m, n, bs, Par::Seq, params));
            qr::qr_in_place(a.as_mut(), coeff.as_mut(), &mut perm, &mut perm_inv, Par::Seq, MemStack::new(&mut mem), params);
            taus = lapack_taus(coeff.as_ref());
        } else {
            perm = (0..n).collect();
        }
        let jpvt: Vec<i32> = perm.iter().map(|&p| p as i32 + 1).collect();
        (a, jpvt, taus)
    });
    for (b, (a, jpvt, taus)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, a.as_ref());
        store_i32(&mut call.rets[1], b, &jpvt);
        store_values(&mut call.rets[2], b, &taus);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ormqr/unmqr: op(Q) C (left) or C op(Q) (right) with Q = H_1 ... H_k in geqrf's storage;
// attributes left and transpose (conjugate transpose for complex types). Operands: the
// reflectors, tau, C. Applied one reflector at a time, as LAPACK's orm2r/unm2r.

handler!(Ormqr, "ormqr", ormqr);

fn bool_attr(call: &FfiCall<'_>, name: &str, target: &str) -> R<bool> {
    match call.attr(name) {
        Some(FfiAttr::Int(v)) if *v == 0 || *v == 1 => Ok(*v == 1),
        Some(other) => Err(format!("{target}: attribute {name} = {other:?}, expected a bool")),
        None => Err(format!("{target}: missing attribute {name}")),
    }
}

fn ormqr<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 3, 1, "ormqr")?;
    let left = bool_attr(call, "left", "ormqr")?;
    let transpose = bool_attr(call, "transpose", "ormqr")?;
    let (sa, a_mats) = arg_matrices::<T>(&call.args[0], "ormqr operand 0")?;
    let (count, k, taus) = arg_vectors::<T>(&call.args[1], "ormqr operand 1 (tau)")?;
    let (sc, c_mats) = arg_matrices::<T>(&call.args[2], "ormqr operand 2 (C)")?;
    let order = if left { sc.rows } else { sc.cols };
    if count != sa.count || sc.count != sa.count || sa.rows != order || k > sa.cols || k > order {
        return Err(format!(
            "ormqr: reflectors {}x{}, {k} taus, C {}x{} (side {}), batches {} / {count} / {}",
            sa.rows,
            sa.cols,
            sc.rows,
            sc.cols,
            if left { "left" } else { "right" },
            sa.count,
            sc.count
        ));
    }
    check_ret_like(&call.rets[0], &call.args[2], "ormqr result")?;
    let results = par_map(a_mats.into_iter().zip(c_mats).enumerate().collect(), |(b, (a, mut c)): (usize, (Mat<T>, Mat<T>))| {
        let taus = &taus[b * k..(b + 1) * k];
        // Q C = H_1 (... (H_k C)); Q^H C = H_k^H (... (H_1^H C)); C Q = ((C H_1) ...) H_k;
        // C Q^H = ((C H_k^H) ...) H_1^H. H_i^H = I - conj(tau_i) v_i v_i^H.
        let forward = left == transpose;
        let order: Vec<usize> = if forward { (0..k).collect() } else { (0..k).rev().collect() };
        for i in order {
            let tau = if transpose { taus[i].conj_() } else { taus[i] };
            apply_reflector(&a, i, tau, c.as_mut(), left);
        }
        c
    });
    store_matrices(&mut call.rets[0], &results);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gehrd: Hessenberg reduction A = Q H Q^H in LAPACK's storage (H on and above the
// subdiagonal, reflectors below it, n - 1 taus); attributes low/high (1-based ilo/ihi: only the
// whole matrix, 1 and n, as JAX passes). Results: the storage, tau, info.

handler!(Gehrd, "gehrd", gehrd);

fn gehrd<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 1, 3, "gehrd")?;
    let (s, mats) = arg_matrices::<T>(&call.args[0], "gehrd operand")?;
    if s.rows != s.cols {
        return Err(format!("gehrd: matrices are {}x{}, expected square", s.rows, s.cols));
    }
    let n = s.rows;
    let (low, high) = (call.attr("low").cloned(), call.attr("high").cloned());
    if low != Some(FfiAttr::Int(1)) || high != Some(FfiAttr::Int(n as i64)) {
        return Err(format!("gehrd: low = {low:?}, high = {high:?}; only the whole matrix (1, {n}) is supported"));
    }
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    let nt = n.saturating_sub(1);
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[n, n])?, "gehrd result 0")?;
    check_ret(&call.rets[1], T::TYPE, &with_batch(batch, &[nt])?, "gehrd taus")?;
    check_ret(&call.rets[2], DType::S32, &with_batch(batch, &[])?, "gehrd info")?;
    use faer::linalg::evd::hessenberg as hess;
    let results = par_map(mats, |mut a| {
        let mut taus = Vec::new();
        if nt > 0 {
            let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<T>(nt, nt);
            let mut coeff = Mat::<T>::zeros(bs, nt);
            let params = Default::default();
            let mut mem = MemBuffer::new(hess::hessenberg_in_place_scratch::<T>(n, bs, Par::Seq, params));
            hess::hessenberg_in_place(a.as_mut(), coeff.as_mut(), Par::Seq, MemStack::new(&mut mem), params);
            taus = lapack_taus(coeff.as_ref());
        }
        (a, taus)
    });
    for (b, (a, taus)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, a.as_ref());
        store_values(&mut call.rets[1], b, &taus);
        store_i32(&mut call.rets[2], b, &[0]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gtsv: solves a tridiagonal system A X = B. Operands dl, d, du (each of length n, JAX's
// convention: dl[0] and du[n-1] unused) and B (n x nrhs). Results: dl, d, du as LAPACK leaves
// them, X, info (the 1-based index of an exactly zero pivot; X is then not computed).
// faer has no banded solver; this is LAPACK's gtsv elimination with partial pivoting, O(n).

handler!(Gtsv, "gtsv", gtsv);

fn gtsv<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    expect_counts(call, 4, 5, "gtsv")?;
    let (c0, n0, dl) = arg_vectors::<T>(&call.args[0], "gtsv operand 0 (dl)")?;
    let (c1, n1, d) = arg_vectors::<T>(&call.args[1], "gtsv operand 1 (d)")?;
    let (c2, n2, du) = arg_vectors::<T>(&call.args[2], "gtsv operand 2 (du)")?;
    let (sb, b_mats) = arg_matrices::<T>(&call.args[3], "gtsv operand 3 (B)")?;
    let n = sb.rows;
    if [c0, c1, c2] != [sb.count; 3] || [n0, n1, n2] != [n; 3] {
        return Err(format!(
            "gtsv: diagonals of {n0}, {n1}, {n2} (batches {c0}, {c1}, {c2}) for B of {}x{} (batch {})",
            sb.rows, sb.cols, sb.count
        ));
    }
    for i in 0..3 {
        check_ret_like(&call.rets[i], &call.args[i], "gtsv diagonal")?;
    }
    check_ret_like(&call.rets[3], &call.args[3], "gtsv X")?;
    let batch = &call.args[3].dims[..call.args[3].dims.len() - 2];
    check_ret(&call.rets[4], DType::S32, &with_batch(batch, &[])?, "gtsv info")?;
    let results = par_map(b_mats.into_iter().enumerate().collect(), |(b, mut x): (usize, Mat<T>)| {
        // LAPACK's arrays: DL(1..n-1) = dl[1..], D = d, DU(1..n-1) = du[..n-1].
        let mut lo: Vec<T> = dl[b * n..(b + 1) * n].to_vec();
        let mut di: Vec<T> = d[b * n..(b + 1) * n].to_vec();
        let mut up: Vec<T> = du[b * n..(b + 1) * n].to_vec();
        let info = gtsv_solve(&mut lo[1.min(n)..], &mut di, &mut up, &mut x);
        (lo, di, up, x, info)
    });
    for (b, (lo, di, up, x, info)) in results.into_iter().enumerate() {
        store_values(&mut call.rets[0], b, &lo);
        store_values(&mut call.rets[1], b, &di);
        store_values(&mut call.rets[2], b, &up);
        store_matrix(&mut call.rets[3], b, x.as_ref());
        store_i32(&mut call.rets[4], b, &[info]);
    }
    Ok(())
}

/// LAPACK's gtsv on `dl` (n - 1 used), `d` (n), `du` (n; the last is the second superdiagonal
/// slot LAPACK uses during pivoting) and the right-hand sides `x`; returns info.
fn gtsv_solve<T: Elem>(dl: &mut [T], d: &mut [T], du: &mut [T], x: &mut Mat<T>) -> i32 {
    let n = d.len();
    if n == 0 {
        return 0;
    }
    let nrhs = x.ncols();
    for i in 0..n - 1 {
        if d[i].abs1() >= dl[i].abs1() {
            // No interchange.
            if d[i] == T::zero() {
                return i as i32 + 1;
            }
            let fact = dl[i] * d[i].recip();
            let t = du[i];
            d[i + 1] -= fact * t;
            for j in 0..nrhs {
                let bi = x[(i, j)];
                x[(i + 1, j)] -= fact * bi;
            }
            if i < n - 2 {
                dl[i] = T::zero();
            }
        } else {
            // Interchange rows i and i + 1.
            let fact = d[i] * dl[i].recip();
            d[i] = dl[i];
            let temp = d[i + 1];
            d[i + 1] = du[i] - fact * temp;
            if i < n - 2 {
                dl[i] = du[i + 1];
                let t = dl[i];
                du[i + 1] = -(fact * t);
            }
            du[i] = temp;
            for j in 0..nrhs {
                let temp = x[(i, j)];
                x[(i, j)] = x[(i + 1, j)];
                let next = x[(i, j)];
                x[(i + 1, j)] = temp - fact * next;
            }
        }
    }
    if d[n - 1] == T::zero() {
        return n as i32;
    }
    for j in 0..nrhs {
        let r = d[n - 1].recip();
        x[(n - 1, j)] *= r;
        if n > 1 {
            let v = x[(n - 2, j)] - du[n - 2] * x[(n - 1, j)];
            x[(n - 2, j)] = v * d[n - 2].recip();
        }
        for i in (0..n.saturating_sub(2)).rev() {
            let v = x[(i, j)] - du[i] * x[(i + 1, j)] - dl[i] * x[(i + 2, j)];
            x[(i, j)] = v * d[i].recip();
        }
    }
    0
}

// ---------------------------------------------------------------------------------------------
// geev: eigenvalues and left/right eigenvectors of a general matrix (attributes compute_left,
// compute_right: 'V' or 'N'). Real types: results wr, wi, vl, vr (complex), info; complex
// types: w, vl, vr, info. Each eigenvector has unit 2-norm and, as LAPACK makes it, its
// largest component real; vl holds u with u^H A = lambda u^H. The order of the eigenvalues is
// faer's (LAPACK's order is no more canonical; compare as sets).

handler!(Geev, "geev", geev);

/// Unit 2-norm, then rotated so that the component of largest modulus is real and positive.
fn lapack_normalize<C: Elem>(v: &mut [C]) {
    let norm: f64 = v.iter().map(|x| x.abs_sq()).sum::<f64>().sqrt();
    if norm == 0.0 {
        return;
    }
    let big = (0..v.len()).fold(0, |best, i| if v[i].abs_sq() > v[best].abs_sq() { i } else { best });
    let m = v[big].abs_sq().sqrt();
    // factor = conj(v[big]) / (|v[big]| * norm)
    let factor = v[big].conj_().scale(1.0 / (m * norm));
    for x in v.iter_mut() {
        *x *= factor;
    }
}

/// Eigenvalues, left and right eigenvectors, info.
type GeevOut<C> = (Vec<C>, Mat<C>, Mat<C>, i32);

fn geev<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    let real = T::TYPE == DType::F32 || T::TYPE == DType::F64;
    expect_counts(call, 1, if real { 5 } else { 4 }, "geev")?;
    let left = ascii_attr(call, "compute_left", b"VN", "geev")? == b'V';
    let right = ascii_attr(call, "compute_right", b"VN", "geev")? == b'V';
    let (s, mats) = arg_matrices::<T>(&call.args[0], "geev operand")?;
    if s.rows != s.cols {
        return Err(format!("geev: matrices are {}x{}, expected square", s.rows, s.cols));
    }
    let n = s.rows;
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    let ctype = <T::C as Elem>::TYPE;
    let nv = if real { 2 } else { 1 };
    for i in 0..nv {
        check_ret(&call.rets[i], if real { T::TYPE } else { ctype }, &with_batch(batch, &[n])?, "geev eigenvalues")?;
    }
    check_ret(&call.rets[nv], ctype, &with_batch(batch, &[n, n])?, "geev left eigenvectors")?;
    check_ret(&call.rets[nv + 1], ctype, &with_batch(batch, &[n, n])?, "geev right eigenvectors")?;
    check_ret(&call.rets[nv + 2], DType::S32, &with_batch(batch, &[])?, "geev info")?;
    let results = par_map(mats, |a| -> GeevOut<T::C> {
        let zero = || (vec![T::C::zero(); n], Mat::<T::C>::zeros(n, n), Mat::<T::C>::zeros(n, n), 1);
        if !all_finite(a.as_ref()) {
            return zero();
        }
        // faer's eigendecomposition (of a real matrix through its real Schur form, so that
        // conjugate pairs are exact).
        let Some((w, mut vr)) = T::eigen(a.as_ref()) else { return zero() };
        let mut vl = Mat::<T::C>::zeros(n, n);
        if left {
            // Left eigenvectors: the rows of V^-1 (u_j^H A = lambda_j u_j^H), conjugated.
            let inv = <T::C as Elem>::inverse(vr.as_ref());
            vl = Mat::from_fn(n, n, |i, j| inv[(j, i)].conj_());
        }
        for (m, want) in [(&mut vr, right), (&mut vl, left)] {
            if !want {
                *m = Mat::zeros(n, n);
                continue;
            }
            for j in 0..n {
                let mut col: Vec<T::C> = (0..n).map(|i| m[(i, j)]).collect();
                lapack_normalize(&mut col);
                for (i, v) in col.into_iter().enumerate() {
                    m[(i, j)] = v;
                }
            }
        }
        (w, vl, vr, 0)
    });
    for (b, (w, vl, vr, info)) in results.into_iter().enumerate() {
        if real {
            let re: Vec<T::Re> = w.iter().map(|x| x.real()).collect();
            let im: Vec<T::Re> = w.iter().map(|x| x.imag()).collect();
            store_values(&mut call.rets[0], b, &re);
            store_values(&mut call.rets[1], b, &im);
        } else {
            store_values(&mut call.rets[0], b, &w);
        }
        store_matrix(&mut call.rets[nv], b, vl.as_ref());
        store_matrix(&mut call.rets[nv + 1], b, vr.as_ref());
        store_i32(&mut call.rets[nv + 2], b, &[info]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gees: Schur decomposition A = Z T Z^H (attributes mode 'V'/'N' for Z, sort 'N' only: JAX
// does not implement sorting). Real types: results T (quasi-triangular, a 2 x 2 block per
// conjugate pair), Z, wr, wi, sdim, info; complex types: T (triangular), Z, w, sdim, info.
// The Schur form is not unique: ours is nalgebra's (faer keeps its Schur routines private),
// with eigenvalues in its order along the diagonal and 2 x 2 blocks not put in LAPACK's
// standard form (equal diagonal entries).

handler!(Gees, "gees", gees);

fn gees<T: Elem>(call: &mut FfiCall<'_>) -> R<()> {
    let real = T::TYPE == DType::F32 || T::TYPE == DType::F64;
    expect_counts(call, 1, if real { 6 } else { 5 }, "gees")?;
    let vectors = ascii_attr(call, "mode", b"VN", "gees")? == b'V';
    if ascii_attr(call, "sort", b"NS", "gees")? != b'N' {
        return Err("gees: sorting the eigenvalues (sort = 'S') is not supported".into());
    }
    let (s, mats) = arg_matrices::<T>(&call.args[0], "gees operand")?;
    if s.rows != s.cols {
        return Err(format!("gees: matrices are {}x{}, expected square", s.rows, s.cols));
    }
    let n = s.rows;
    let batch = &call.args[0].dims[..call.args[0].dims.len() - 2];
    check_ret(&call.rets[0], T::TYPE, &with_batch(batch, &[n, n])?, "gees Schur form")?;
    check_ret(&call.rets[1], T::TYPE, &with_batch(batch, &[n, n])?, "gees Schur vectors")?;
    let nv = if real { 2 } else { 1 };
    for i in 0..nv {
        check_ret(&call.rets[2 + i], T::TYPE, &with_batch(batch, &[n])?, "gees eigenvalues")?;
    }
    check_ret(&call.rets[2 + nv], DType::S32, &with_batch(batch, &[])?, "gees sdim")?;
    check_ret(&call.rets[3 + nv], DType::S32, &with_batch(batch, &[])?, "gees info")?;
    let results = par_map(mats, |a| {
        let failed = |a: Mat<T>| (a, Mat::<T>::zeros(n, n), vec![<T::C as Elem>::zero(); n], 1);
        if !all_finite(a.as_ref()) {
            return failed(a);
        }
        match T::schur(a.as_ref()) {
            Some((t, z, w)) => (t, if vectors { z } else { Mat::zeros(n, n) }, w, 0),
            None => failed(a),
        }
    });
    for (b, (t, z, w, info)) in results.into_iter().enumerate() {
        store_matrix(&mut call.rets[0], b, t.as_ref());
        store_matrix(&mut call.rets[1], b, z.as_ref());
        if real {
            let re: Vec<T::Re> = w.iter().map(|x| x.real()).collect();
            let im: Vec<T::Re> = w.iter().map(|x| x.imag()).collect();
            store_values(&mut call.rets[2], b, &re);
            store_values(&mut call.rets[3], b, &im);
        } else {
            let w: Vec<T> = w.iter().map(|x| T::from_complex(*x)).collect();
            store_values(&mut call.rets[2], b, &w);
        }
        store_i32(&mut call.rets[2 + nv], b, &[0]);
        store_i32(&mut call.rets[3 + nv], b, &[info]);
    }
    Ok(())
}
