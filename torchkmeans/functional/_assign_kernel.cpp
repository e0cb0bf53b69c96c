// Fused nearest-centroid search for the CPU: the scores of a few rows against
// all centroids, their minimum and its index, and optionally the cluster
// totals of a Lloyd step, computed while the rows are in registers. The
// (n, k) score matrix is never written to memory.
//
// Compiled with the machine's C++ compiler (-O3 -march=native -fopenmp) by
// torchkmeans/functional/_native_build.py, at install time or on first use,
// and called through ctypes by _native.py; without a compiler torchkmeans
// uses its PyTorch ops instead. No Python or PyTorch headers: plain pointers.
//
// The score of row x (less the offset, when given) and centroid c is
// bias[c] + sum_j x_j * a[c][j], with a = -2c and bias = |c|^2 (euclidean,
// the squared distance less |x|^2) or a = -c and bias = 0 (cosine). Ties go
// to the lowest index, as torch.min and numpy.argmin do.
//
// Two layouts, picked by the caller:
// - rows: lanes hold centroids. a is kept transposed and padded, at (w, kp)
//   with kp a multiple of the lanes and a bias of +inf on the padding, stored as
//   contiguous panels of kBlocks vectors of centroids. As in a blocked
//   matrix product, a chunk of rows is scored against one panel (a block of
//   its features at a time, small enough for the L1 cache) before the next,
//   a tile of a few rows at a time in registers, and each row keeps a running
//   minimum per lane across panels.
// - columns: lanes hold rows, for narrow rows. a is aug (k, w). Needs no
//   reduction across lanes.
// - dots: lanes hold features, for few centroids of many features (the row
//   layout pads k to 16 lanes, so k=2 would cost as much as k=16). a is aug
//   (k, w) padded with zeros to whole vectors; each row's k sums are
//   reduced across lanes once, at the end.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

// Rows of a row tile against kBlocks vectors of centroids: 4 x 4 accumulators
// of the 32 vector registers with AVX-512, 2 x 4 of 16 below.
#if defined(__AVX512F__)
constexpr int kBytes = 64;
constexpr int kTileRows = 4;
#elif defined(__AVX__)
constexpr int kBytes = 32;
constexpr int kTileRows = 2;
#else
constexpr int kBytes = 16;
constexpr int kTileRows = 2;
#endif
constexpr int kBlocks = 4;
constexpr int kGroups = 2;  // vectors of rows per column group
constexpr int kChunkRows = 64;  // rows scored against each panel in turn
constexpr int64_t kDepthBytes = 32 * 1024;  // of a panel, scored against a chunk at a time
constexpr int kNarrowTotals = 8;  // rows this narrow have their totals added unrolled
constexpr int kColumnWidths = 16;  // column groups this narrow are unrolled
constexpr int kDotsMaxK = 4;  // the dots layout takes at most this many centroids
constexpr int kBlocksMaxK = 8;  // the blocks layout takes at most this many centroids

template <typename T> struct Vec;
template <> struct Vec<float> {
    typedef float type __attribute__((vector_size(kBytes), aligned(4)));
    typedef int32_t lane;
    typedef int32_t index __attribute__((vector_size(kBytes), aligned(4)));
};
template <> struct Vec<double> {
    typedef double type __attribute__((vector_size(kBytes), aligned(8)));
    typedef int64_t lane;
    typedef int64_t index __attribute__((vector_size(kBytes), aligned(8)));
};

template <typename T> constexpr int lanes_of() { return kBytes / static_cast<int>(sizeof(T)); }

// A buffer whose data starts on a cache line. malloc only promises 16 bytes:
// unless the address happens to be a multiple of 64, every AVX-512 load from
// the buffer straddles two lines (half of them with AVX2), which cost the row
// layout up to a third of its speed, varying from one allocation to the next.
template <typename T> struct Aligned {
    std::vector<T> storage;
    T* data;
    explicit Aligned(size_t size, T fill = T(0)) : storage(size + 64 / sizeof(T), fill) {
        const uintptr_t address = reinterpret_cast<uintptr_t>(storage.data());
        data = reinterpret_cast<T*>((address + 63) & ~uintptr_t(63));
    }
};

// a < b ? a : b per lane (b where either is NaN), as one minimum instruction
// where there is one. Compilers fold the select into the comparison that
// also picks the index, a masked move, which puts the comparison's latency
// on the running minimum's chain from centroid to centroid: one thread, Zen
// 5, the column layout's time with the minimum instruction: d=1-4, k=512-
// 4,096 0.45-0.73x (float64 d=4 0.67x), d=6-8 0.92-1.0x; AVX2 builds d=2-4
// 0.75-0.94x; the same labels.
template <typename T>
inline typename Vec<T>::type lower(typename Vec<T>::type a, typename Vec<T>::type b) {
    return a < b ? a : b;
}
#if defined(__AVX512F__)
template <>
inline Vec<float>::type lower<float>(Vec<float>::type a, Vec<float>::type b) {
    return reinterpret_cast<Vec<float>::type>(
        _mm512_min_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b)));
}
template <>
inline Vec<double>::type lower<double>(Vec<double>::type a, Vec<double>::type b) {
    return reinterpret_cast<Vec<double>::type>(
        _mm512_min_pd(reinterpret_cast<__m512d>(a), reinterpret_cast<__m512d>(b)));
}
#elif defined(__AVX__)
template <>
inline Vec<float>::type lower<float>(Vec<float>::type a, Vec<float>::type b) {
    return reinterpret_cast<Vec<float>::type>(
        _mm256_min_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b)));
}
template <>
inline Vec<double>::type lower<double>(Vec<double>::type a, Vec<double>::type b) {
    return reinterpret_cast<Vec<double>::type>(
        _mm256_min_pd(reinterpret_cast<__m256d>(a), reinterpret_cast<__m256d>(b)));
}
#endif

// ---- rows layout -------------------------------------------------------------

// Makes the compiler hold v in a register from here on: GCC folds the load
// of a panel's vector into each of the R multiply-adds that use it, R loads
// where one will do, and then the loads, not the multiply-adds, bound the
// row layout's loop (one thread, Zen 5, the kernel's time with the vector
// held: d=16, k=4096 0.77x; d=64-256, k=512-1,024 0.79-0.81x; the same
// scores, bit for bit).
template <typename V>
inline void in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
    asm("" : "+v"(v));
#elif defined(__aarch64__)
    asm("" : "+w"(v));
#else
    (void)v;
#endif
}

// Minimum across the lanes, and the lowest index among lanes holding it
// (each lane holds the first index of its own minimum).
template <typename T>
inline void reduce(typename Vec<T>::type value, typename Vec<T>::index index, T* best,
                   int64_t* label) {
    constexpr int L = lanes_of<T>();
    T v[L];
    typename Vec<T>::lane i[L];
    std::memcpy(v, &value, sizeof(v));
    std::memcpy(i, &index, sizeof(i));
    for (int half = L / 2; half >= 1; half /= 2) {
        for (int l = 0; l < half; ++l) {
            const bool take = v[l + half] < v[l] || (v[l + half] == v[l] && i[l + half] < i[l]);
            v[l] = take ? v[l + half] : v[l];
            i[l] = take ? i[l + half] : i[l];
        }
    }
    *best = v[0];
    *label = i[0];
}

#if defined(__AVX512F__)
template <>
inline void reduce<float>(Vec<float>::type value, Vec<float>::index index, float* best,
                          int64_t* label) {
    const __m512 v = reinterpret_cast<__m512>(value);
    const float m = _mm512_reduce_min_ps(v);
    const __mmask16 at = _mm512_cmp_ps_mask(v, _mm512_set1_ps(m), _CMP_EQ_OQ);
    const __m512i i = reinterpret_cast<__m512i>(index);
    *best = m;
    if (at && !(at & (at - 1)))  // one lane holds the minimum (no tie): take its index
        *label = _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_maskz_compress_epi32(at, i)));
    else
        *label = at ? _mm512_mask_reduce_min_epi32(at, i) : 0;
}

template <>
inline void reduce<double>(Vec<double>::type value, Vec<double>::index index, double* best,
                           int64_t* label) {
    const __m512d v = reinterpret_cast<__m512d>(value);
    const double m = _mm512_reduce_min_pd(v);
    const __mmask8 at = _mm512_cmp_pd_mask(v, _mm512_set1_pd(m), _CMP_EQ_OQ);
    const __m512i i = reinterpret_cast<__m512i>(index);
    *best = m;
    if (at && !(at & (at - 1)))  // one lane holds the minimum (no tie): take its index
        *label = _mm_cvtsi128_si64(_mm512_castsi512_si128(_mm512_maskz_compress_epi64(at, i)));
    else
        *label = at ? _mm512_mask_reduce_min_epi64(at, i) : 0;
}
#endif

// What the rows of a chunk carry from panel to panel: per row its running
// minimum per lane and that lane's index, and the partial scores of the
// current panel between blocks of features.
template <typename T> struct Chunk {
    typename Vec<T>::type* vmin;    // (rows)
    typename Vec<T>::index* vidx;   // (rows)
    typename Vec<T>::type* partial; // (rows, kBlocks)
};

// R rows against features [j0, j1) of one panel of NB vectors of centroids,
// (w, NB * L) at row stride `stride`, whose first centroid is `first`. R * NB
// accumulators make that many independent chains of multiply-adds; they
// start from the partial scores unless j0 is 0, and are stored back there
// unless j1 is w, where the scores are folded into each row's running
// minimum per lane instead. Partial scores are stored exactly, so the sums
// are those of one pass over all features.
//
// Whole: the panel is all the centroids and [j0, j1) all the features; the
// running minimum stays in registers and is reduced into best and label.
// keep (rows at stride ldk) or null: each row's final scores also stored
// there, at their centroids' indices (see certify_chunk).
template <typename T, int R, int NB, bool Whole>
inline void score_panel(const T* x, int64_t ldx, int64_t j0, int64_t j1, int64_t w,
                        const T* panel, int64_t stride, const T* bias, int64_t first,
                        typename Vec<T>::type* vmin, typename Vec<T>::index* vidx,
                        typename Vec<T>::type* partial, T* best, int64_t* label, T* keep,
                        int64_t ldk) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::index I;
    typedef typename Vec<T>::lane J;
    constexpr int L = lanes_of<T>();
    V acc[R][NB];
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < NB; ++b)
            acc[r][b] = Whole || j0 == 0 ? V{} : partial[r * kBlocks + b];
    for (int64_t j = j0; j < j1; ++j) {
        V a[NB];
        for (int b = 0; b < NB; ++b) {
            a[b] = *reinterpret_cast<const V*>(panel + j * stride + b * L);
            in_register(a[b]);
        }
        for (int r = 0; r < R; ++r) {
            // vector * scalar broadcasts the scalar (into the multiply-add
            // itself); V{} + scalar would cost a scalar add first.
            const T xr = x[r * ldx + j];
            for (int b = 0; b < NB; ++b) acc[r][b] += a[b] * xr;
        }
    }
    if (!Whole && j1 < w) {
        for (int r = 0; r < R; ++r)
            for (int b = 0; b < NB; ++b) partial[r * kBlocks + b] = acc[r][b];
        return;
    }
    I lanes;
    for (int l = 0; l < L; ++l) lanes[l] = static_cast<J>(first + l);
    for (int b = 0; b < NB; ++b) {
        // The bias last, as BLAS-based code adds it: bias + (-2 x.c).
        const V p = *reinterpret_cast<const V*>(bias + first + b * L);
        for (int r = 0; r < R; ++r) acc[r][b] += p;
    }
    if (keep)
        for (int r = 0; r < R; ++r)
            for (int b = 0; b < NB; ++b)
                std::memcpy(keep + r * ldk + first + b * L, &acc[r][b], sizeof(V));
    for (int r = 0; r < R; ++r) {
        V low = Whole ? V{} + std::numeric_limits<T>::infinity() : vmin[r];
        I index = Whole ? I{} : vidx[r];
        for (int b = 0; b < NB; ++b) {
            const auto lt = acc[r][b] < low;
            low = lt ? acc[r][b] : low;
            index = lt ? lanes + static_cast<J>(b * L) : index;
        }
        if (Whole) {
            reduce<T>(low, index, best + r, label + r);
        } else {
            vmin[r] = low;
            vidx[r] = index;
        }
    }
}

// Features per block of a panel of `stride` centroids: at most kDepthBytes
// of the panel, so that each block stays in the L1 cache while all the
// chunk's rows are scored against it; blocks of equal size.
template <typename T>
inline int64_t panel_depth(int64_t w, int64_t stride) {
    const int64_t most = std::max<int64_t>(1, kDepthBytes / (stride * int64_t(sizeof(T))));
    const int64_t blocks = (w + most - 1) / most;
    return (w + blocks - 1) / blocks;
}

// Rows [0, m) of a chunk against one panel, R rows at a time, a block of
// features (see panel_depth) at a time.
template <typename T, int R, int NB, bool Whole = false>
inline void panel_rows(const T* rows, int64_t ldx, int m, int64_t w, const T* panel,
                       int64_t stride, const T* bias, int64_t first, const Chunk<T>& chunk,
                       T* best, int64_t* label, T* keep, int64_t ldk) {
    const int64_t depth = Whole ? w : panel_depth<T>(w, stride);
    for (int64_t j0 = 0; j0 < w; j0 += depth) {
        const int64_t j1 = std::min(w, j0 + depth);
        int r = 0;
        for (; r + R <= m; r += R)
            score_panel<T, R, NB, Whole>(rows + r * ldx, ldx, j0, j1, w, panel, stride, bias,
                                         first, chunk.vmin + r, chunk.vidx + r,
                                         chunk.partial + r * kBlocks, best + r, label + r,
                                         keep ? keep + r * ldk : nullptr, ldk);
        for (; r < m; ++r)
            score_panel<T, 1, NB, Whole>(rows + r * ldx, ldx, j0, j1, w, panel, stride, bias,
                                         first, chunk.vmin + r, chunk.vidx + r,
                                         chunk.partial + r * kBlocks, best + r, label + r,
                                         keep ? keep + r * ldk : nullptr, ldk);
    }
}

// Rows per tile against NB vectors of centroids: R * NB accumulators, plus
// NB loads and a broadcast, of 32 registers with AVX-512 and 16 below, and
// enough independent chains of multiply-adds to cover their latency. Below
// AVX-512, 2 rows against 3 vectors, 3 against 2 and 4 against 1 had left
// the chains waiting (AVX2 build, one thread, Zen 5: d=32, k=16 took as long
// as k=64).
template <int NB>
constexpr int tile_rows() {
#if defined(__AVX512F__)
    return NB >= 3 ? kTileRows : NB == 2 ? kTileRows * 3 / 2 : kTileRows * 2;
#else
    return NB == 4 ? 2 : NB == 3 ? 3 : NB == 2 ? 6 : 8;
#endif
}

// Rows [0, m) against one panel of `vectors` vectors of centroids, its first
// centroid `first`. Fewer vectors leave registers for more rows per tile
// (see tile_rows).
template <typename T, bool Whole = false>
inline void panel_of(int64_t vectors, const T* rows, int64_t ldx, int m, int64_t w,
                     const T* panel, const T* bias, int64_t first, const Chunk<T>& chunk,
                     T* best, int64_t* label, T* keep, int64_t ldk) {
    const int64_t stride = vectors * lanes_of<T>();
    switch (vectors) {
        case kBlocks:
            panel_rows<T, tile_rows<kBlocks>(), kBlocks, Whole>(rows, ldx, m, w, panel, stride,
                                                                bias, first, chunk, best, label,
                                                                keep, ldk);
            break;
        case 3:
            panel_rows<T, tile_rows<3>(), 3, Whole>(rows, ldx, m, w, panel, stride, bias, first,
                                                    chunk, best, label, keep, ldk);
            break;
        case 2:
            panel_rows<T, tile_rows<2>(), 2, Whole>(rows, ldx, m, w, panel, stride, bias, first,
                                                    chunk, best, label, keep, ldk);
            break;
        case 1:
            panel_rows<T, tile_rows<1>(), 1, Whole>(rows, ldx, m, w, panel, stride, bias, first,
                                                    chunk, best, label, keep, ldk);
            break;
        default:
            break;
    }
}

// Rows [0, m) against all kp centroids, panel by panel (the last one
// narrower), then one reduction across lanes per row.
template <typename T>
inline void tiles(const T* rows, int64_t ldx, int m, int64_t w, const T* at, const T* bias,
                  int64_t kp, const Chunk<T>& chunk, T* best, int64_t* label, T* keep) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::index I;
    constexpr int L = lanes_of<T>();
    if (kp <= kBlocks * L && w <= panel_depth<T>(w, kp)) {
        // One panel, one block: nothing to carry, all in registers.
        panel_of<T, true>(kp / L, rows, ldx, m, w, at, bias, 0, chunk, best, label, keep, kp);
        return;
    }
    for (int r = 0; r < m; ++r) {
        chunk.vmin[r] = V{} + std::numeric_limits<T>::infinity();
        chunk.vidx[r] = I{};
    }
    for (int64_t kb = 0; kb < kp; kb += kBlocks * L)
        panel_of<T>(std::min<int64_t>(kBlocks, (kp - kb) / L), rows, ldx, m, w, at + kb * w, bias,
                    kb, chunk, nullptr, nullptr, keep, kp);
    for (int r = 0; r < m; ++r) reduce<T>(chunk.vmin[r], chunk.vidx[r], best + r, label + r);
}

// ---- columns layout ----------------------------------------------------------

// The first `count` (< L) values at p, the other lanes 0; nothing past
// p + count is read.
template <typename T>
inline typename Vec<T>::type load_head(const T* p, int count) {
    typename Vec<T>::type v{};
    for (int l = 0; l < count; ++l) v[l] = p[l];
    return v;
}

#if defined(__AVX512F__)
template <>
inline Vec<float>::type load_head<float>(const float* p, int count) {
    return reinterpret_cast<Vec<float>::type>(
        _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p));
}

template <>
inline Vec<double>::type load_head<double>(const double* p, int count) {
    return reinterpret_cast<Vec<double>::type>(
        _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p));
}
#endif

// kGroups * L full rows into xt (w, kGroups) by gather instructions, where
// the machine has them; false: the caller copies element by element.
template <typename T>
inline bool gather(const T*, int64_t, int64_t, typename Vec<T>::type*) {
    return false;
}

#if defined(__AVX512F__)
// AMD's AVX-512 gathers (Zen 4, Zen 5) are microcoded: there the copy is
// faster (200,000 x 16 rows, k=2-4, one thread: the column layout's time
// 1.46 -> 1.08 ms in float32, 4.9 -> 1.4 ms in float64, on a Zen 5). Intel's
// keep them.
inline bool fast_gathers() {
    static const bool fast = (__builtin_cpu_init(), !__builtin_cpu_is("amd"));
    return fast;
}

template <>
inline bool gather<float>(const float* x, int64_t ldx, int64_t w, Vec<float>::type* xt) {
    if (ldx > (1 << 26) || !fast_gathers()) return false;  // 32-bit offsets
    const __m512i offsets =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(static_cast<int>(ldx)));
    for (int g = 0; g < kGroups; ++g) {
        const float* base = x + g * 16 * ldx;
        for (int64_t j = 0; j < w; ++j)
            xt[j * kGroups + g] =
                reinterpret_cast<Vec<float>::type>(_mm512_i32gather_ps(offsets, base + j, 4));
    }
    return true;
}

template <>
inline bool gather<double>(const double* x, int64_t ldx, int64_t w, Vec<double>::type* xt) {
    if (!fast_gathers()) return false;
    const __m512i offsets =
        _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(ldx));
    for (int g = 0; g < kGroups; ++g) {
        const double* base = x + g * 8 * ldx;
        for (int64_t j = 0; j < w; ++j)
            xt[j * kGroups + g] =
                reinterpret_cast<Vec<double>::type>(_mm512_i64gather_pd(offsets, base + j, 8));
    }
    return true;
}
#endif

// Lane c of the pair (a, b) after swapping the off-diagonal H x H blocks of
// the rows a and b = a + H of a square of L x L values: the first (or,
// Second, the second) row's new lanes.
template <int L, int H, bool Second>
constexpr int swap_lane(int c) {
    if (Second) return (c & H) ? L + c : c + H;
    return (c & H) ? L + c - H : c;
}

template <typename T, int H, bool Second, size_t... I>
inline typename Vec<T>::type swap_blocks(typename Vec<T>::type a, typename Vec<T>::type b,
                                         std::index_sequence<I...>) {
    constexpr int L = lanes_of<T>();
#if defined(__clang__)
    return __builtin_shufflevector(a, b, swap_lane<L, H, Second>(I)...);
#else
    return __builtin_shuffle(a, b, typename Vec<T>::index{swap_lane<L, H, Second>(I)...});
#endif
}

// L vectors of L lanes transposed in place: the off-diagonal halves of ever
// smaller blocks swapped, log2(L) rounds of L two-source shuffles.
template <typename T, int H = lanes_of<T>() / 2>
inline void transpose_square(typename Vec<T>::type* v) {
    if constexpr (H >= 1) {
        constexpr auto lanes = std::make_index_sequence<lanes_of<T>()>{};
        for (int i = 0; i < lanes_of<T>(); ++i) {
            if (i & H) continue;
            const typename Vec<T>::type a = v[i], b = v[i + H];
            v[i] = swap_blocks<T, H, false>(a, b, lanes);
            v[i + H] = swap_blocks<T, H, true>(a, b, lanes);
        }
        transpose_square<T, H / 2>(v);
    }
}

// Whether kGroups * L full rows of w features are transposed by shuffle():
// where gathers are slow (see fast_gathers) and a row fills more than half
// a vector but no more than one. Zen 5, 200,000 rows, k=2-16, one thread,
// the column layout's time over the copy's: float32 d=9-16 0.45-0.8, float64
// d=8 0.6-0.7; narrower rows stay copied (as fast), and wider float64 rows
// too (two vectors a row: 1.2-1.5).
template <typename T>
inline bool shuffled(int64_t w) {
#if defined(__AVX512F__)
    return !fast_gathers() && 2 * w > lanes_of<T>() && w <= lanes_of<T>();
#else
    (void)w;
    return false;
#endif
}

// kGroups * L full rows into xt (w, kGroups), where shuffled(w): each row
// loaded in one vector, each L of them transposed in registers; false: the
// caller copies element by element.
template <typename T>
inline bool shuffle(const T* x, int64_t ldx, int64_t w, typename Vec<T>::type* xt) {
    typedef typename Vec<T>::type V;
    constexpr int L = lanes_of<T>();
    if (!shuffled<T>(w)) return false;
    V v[L];
    for (int g = 0; g < kGroups; ++g) {
        for (int l = 0; l < L; ++l) {
            const T* row = x + (g * L + l) * ldx;
            // Nothing past the row is read: it may end the caller's data.
            v[l] = w == L ? *reinterpret_cast<const V*>(row)
                          : load_head<T>(row, static_cast<int>(w));
        }
        transpose_square<T>(v);
        for (int64_t j = 0; j < w; ++j) xt[j * kGroups + g] = v[j];
    }
    return true;
}

// The first m lanes of N vectors of lowest scores and of their indices (a
// lane per row) into best and label.
template <typename T, int N>
inline void store_lanes(const typename Vec<T>::type* value, const typename Vec<T>::index* index,
                        int m, T* best, int64_t* label) {
    constexpr int L = lanes_of<T>();
    T values[N * L];
    typename Vec<T>::lane indices[N * L];
    std::memcpy(values, value, sizeof(values));
    std::memcpy(indices, index, sizeof(indices));
    for (int r = 0; r < m; ++r) {
        best[r] = values[r];
        label[r] = indices[r];
    }
}

// m <= kGroups * L rows transposed into xt, then every centroid's score is w
// multiply-adds with its weights broadcast, and the running minimum is kept
// per lane. W > 0 fixes the width at compile time (unrolled, in registers).
// Differences: aug holds the centroids themselves (bias unused) and the
// score is the squared distance summed from differences, exact to the
// rounding of w terms wherever the rows lie (one more op per term).
template <typename T, int W, bool Differences>
inline void column_group(const T* x, int64_t ldx, int m, int64_t width, const T* aug,
                         const T* bias, int64_t k, typename Vec<T>::type* xt, T* best,
                         int64_t* label) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::index I;
    constexpr int L = lanes_of<T>();
    const int64_t w = W ? W : width;
    if (m < kGroups * L || !(gather<T>(x, ldx, w, xt) || shuffle<T>(x, ldx, w, xt))) {
        // Rows past m repeat the last row; their results are dropped.
        for (int g = 0; g < kGroups; ++g) {
            for (int l = 0; l < L; ++l) {
                const int r = g * L + l < m ? g * L + l : m - 1;
                const T* row = x + r * ldx;
                for (int64_t j = 0; j < w; ++j) xt[j * kGroups + g][l] = row[j];
            }
        }
    }
    V vmin[kGroups];
    I vidx[kGroups];
    for (int g = 0; g < kGroups; ++g) {
        vmin[g] = V{} + std::numeric_limits<T>::infinity();
        vidx[g] = I{};
    }
    for (int64_t c = 0; c < k; ++c) {
        const T* a = aug + c * w;
        V acc[kGroups];
        for (int g = 0; g < kGroups; ++g) acc[g] = V{};
        if (Differences) {
            for (int64_t j = 0; j < w; ++j)
                for (int g = 0; g < kGroups; ++g) {
                    const V difference = xt[j * kGroups + g] - a[j];
                    acc[g] += difference * difference;
                }
        } else {
            for (int64_t j = 0; j < w; ++j)
                for (int g = 0; g < kGroups; ++g) acc[g] += xt[j * kGroups + g] * a[j];
            for (int g = 0; g < kGroups; ++g) acc[g] += bias[c];
        }
        const I index = I{} + static_cast<typename Vec<T>::lane>(c);
        for (int g = 0; g < kGroups; ++g) {
            vidx[g] = acc[g] < vmin[g] ? index : vidx[g];
            vmin[g] = lower<T>(acc[g], vmin[g]);
        }
    }
    store_lanes<T, kGroups>(vmin, vidx, m, best, label);
}

// ---- blocks layout -----------------------------------------------------------

// L rows against K centroids, for few centroids of wide rows: lanes hold
// rows, as in the column layout, but the rows are transposed a block of L
// features at a time in registers (L loads and log2(L) rounds of L shuffles
// per block), and each transposed feature feeds K multiply-adds with the
// centroids' weights broadcast. The row layout would pad K <= L / 2 to L
// lanes, spending L multiply-adds where K are needed. Each centroid's score
// is one chain of multiply-adds over the features in order, the bias added
// last, as in the row layout: the same scores, bit for bit. Rows past m
// repeat the last row; their results are dropped.
template <typename T, int K>
inline void block_group(const T* x, int64_t ldx, int m, int64_t w, const T* aug,
                        const T* bias, T* best, int64_t* label) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::index I;
    constexpr int L = lanes_of<T>();
    const T* rows[L];
    for (int l = 0; l < L; ++l) rows[l] = x + (l < m ? l : m - 1) * ldx;
    V acc[K];
    for (int c = 0; c < K; ++c) acc[c] = V{};
    int64_t j0 = 0;
    for (; j0 + L <= w; j0 += L) {
        V v[L];
        for (int l = 0; l < L; ++l) v[l] = *reinterpret_cast<const V*>(rows[l] + j0);
        transpose_square<T>(v);
        // Unrolled, so that the transposed features stay in registers.
#pragma GCC unroll 16
        for (int j = 0; j < L; ++j)
            for (int c = 0; c < K; ++c) acc[c] += v[j] * aug[c * w + j0 + j];
    }
    if (j0 < w) {
        const int count = static_cast<int>(w - j0);
        V v[L];
        // Nothing past a row is read: it may end the caller's data.
        for (int l = 0; l < L; ++l) v[l] = load_head<T>(rows[l] + j0, count);
        transpose_square<T>(v);
        for (int j = 0; j < count; ++j)
            for (int c = 0; c < K; ++c) acc[c] += v[j] * aug[c * w + j0 + j];
    }
    V low = V{} + std::numeric_limits<T>::infinity();
    I index{};
    for (int c = 0; c < K; ++c) {
        const V score = acc[c] + bias[c];
        index = score < low ? I{} + static_cast<typename Vec<T>::lane>(c) : index;
        low = lower<T>(score, low);
    }
    store_lanes<T, 1>(&low, &index, m, best, label);
}

// Rows [0, m) against K centroids in the blocks layout, L rows at a time.
template <typename T, int K>
inline void block_rows(const T* rows, int64_t ldx, int m, int64_t w, const T* aug,
                       const T* bias, T* best, int64_t* label) {
    constexpr int L = lanes_of<T>();
    for (int r = 0; r < m; r += L)
        block_group<T, K>(rows + r * ldx, ldx, std::min(L, m - r), w, aug, bias, best + r,
                          label + r);
}

// ---- dots layout -------------------------------------------------------------

// Output lane i of a pair (a, b) of vectors whose lanes hold groups of G
// partial sums, folded to groups of G / 2: the first half of the lanes from
// a, the second from b, each group's first (or, High, second) half.
template <int L, int G, bool High>
constexpr int fold_lane(int i) {
    const int which = i / (L / 2), within = i % (L / 2);
    return which * L + within / (G / 2) * G + (High ? G / 2 : 0) + within % (G / 2);
}

template <typename T, int G, bool High, size_t... I>
inline typename Vec<T>::type fold_half(typename Vec<T>::type a, typename Vec<T>::type b,
                                       std::index_sequence<I...>) {
    constexpr int L = lanes_of<T>();
#if defined(__clang__)
    return __builtin_shufflevector(a, b, fold_lane<L, G, High>(I)...);
#else
    return __builtin_shuffle(a, b, typename Vec<T>::index{fold_lane<L, G, High>(I)...});
#endif
}

// The lane sums of N vectors into out (in order, ceil(N / L) * L values, the
// last ones padding): pairs of vectors folded into one, a level at a time,
// halving the groups each vector holds partial sums of (from G = L lanes
// each to 1), a lone last vector paired with itself. L - 1 adds and a
// shuffle or two per vector, rather than log2(L) of each per sum; the same
// order on every call.
template <typename T, int N, int G = lanes_of<T>()>
inline void lane_sums(const typename Vec<T>::type* v, T* out) {
    typedef typename Vec<T>::type V;
    if constexpr (G == 1) {
        std::memcpy(out, v, N * sizeof(V));
    } else {
        constexpr int M = (N + 1) / 2;
        constexpr auto lanes = std::make_index_sequence<lanes_of<T>()>{};
        V folded[M];
        for (int i = 0; i < M; ++i) {
            const V a = v[2 * i], b = v[std::min(2 * i + 1, N - 1)];
            folded[i] = fold_half<T, G, false>(a, b, lanes) + fold_half<T, G, true>(a, b, lanes);
        }
        lane_sums<T, M, G / 2>(folded, out);
    }
}

// R rows against all K centroids, for few centroids of many features: lanes
// hold features, each of the R * K accumulators sums one row's products with
// one centroid's weights, L features at a time, and is summed across its
// lanes at the end. a is aug (K, wp), wp a multiple of L, zero past w, so the
// last, partial vector of a row adds nothing from the padding.
template <typename T, int R, int K>
inline void dots_tile(const T* x, int64_t ldx, int64_t w, const T* aug, int64_t wp,
                      const T* bias, T* best, int64_t* label) {
    typedef typename Vec<T>::type V;
    constexpr int L = lanes_of<T>();
    V acc[R][K];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < K; ++c) acc[r][c] = V{};
    int64_t j = 0;
    for (; j + L <= w; j += L) {
        V a[K];
        for (int c = 0; c < K; ++c) a[c] = *reinterpret_cast<const V*>(aug + c * wp + j);
        for (int r = 0; r < R; ++r) {
            const V row = *reinterpret_cast<const V*>(x + r * ldx + j);
            for (int c = 0; c < K; ++c) acc[r][c] += row * a[c];
        }
    }
    if (j < w) {
        V a[K];
        for (int c = 0; c < K; ++c) a[c] = *reinterpret_cast<const V*>(aug + c * wp + j);
        for (int r = 0; r < R; ++r) {
            const V row = load_head<T>(x + r * ldx + j, static_cast<int>(w - j));
            for (int c = 0; c < K; ++c) acc[r][c] += row * a[c];
        }
    }
    constexpr int kSums = (R * K + L - 1) / L * L;
    T sums[kSums];
    lane_sums<T, R * K>(&acc[0][0], sums);
    for (int r = 0; r < R; ++r) {
        // The bias last, as in the other layouts; ties to the lowest index.
        T low = std::numeric_limits<T>::infinity();
        int64_t index = 0;
        for (int c = 0; c < K; ++c) {
            const T score = sums[r * K + c] + bias[c];
            const bool lt = score < low;  // selects, not branches: rows pick at random
            low = lt ? score : low;
            index = lt ? c : index;
        }
        best[r] = low;
        label[r] = index;
    }
}

// Rows [0, m) against K centroids in the dots layout: kTileRows rows at a
// time (R * K accumulators, plus R + K loads, of the vector registers), then
// one at a time.
template <typename T, int K>
inline void dots_rows(const T* rows, int64_t ldx, int m, int64_t w, const T* aug, int64_t wp,
                      const T* bias, T* best, int64_t* label) {
    constexpr int R = kTileRows;
    int r = 0;
    for (; r + R <= m; r += R)
        dots_tile<T, R, K>(rows + r * ldx, ldx, w, aug, wp, bias, best + r, label + r);
    for (; r < m; ++r)
        dots_tile<T, 1, K>(rows + r * ldx, ldx, w, aug, wp, bias, best + r, label + r);
}

// f(std::integral_constant<int, k>) for k in [1, Max]: the centroid count
// fixed at compile time, so that the accumulators stay in registers.
template <int Max, int K = 1, typename F>
inline void with_centroids(int64_t k, F&& f) {
    if constexpr (K <= Max) {
        if (k == K)
            f(std::integral_constant<int, K>{});
        else
            with_centroids<Max, K + 1>(k, f);
    }
}

// ---- driver ------------------------------------------------------------------

// f(std::integral_constant<int, w>) for w in [1, Max], else f of 0: a width
// fixed at compile time, so that narrow rows are unrolled.
template <int Max, int W = 1, typename F>
inline void with_width(int64_t w, F&& f) {
    if constexpr (W > Max) {
        f(std::integral_constant<int, 0>{});
    } else {
        if (w == W)
            f(std::integral_constant<int, W>{});
        else
            with_width<Max, W + 1>(w, f);
    }
}

// One row of more than kNarrowTotals features (weighted, or of weight 1)
// added to its cluster's totals, two vectors of doubles at a time: the
// compiler's own loop took one per iteration (one thread, 262,144 x 64,
// k=64: 0.9x the Lloyd pass's time; 43,690 x 384, k=256: 0.95x).
template <typename T, bool Weighted>
inline void add_wide_row(const T* row, int64_t w, double weight, double* total) {
    constexpr int D = kBytes / 8;  // doubles per vector
    typedef double DV __attribute__((vector_size(kBytes), aligned(8)));
    typedef T TV __attribute__((vector_size(D * sizeof(T)), aligned(sizeof(T))));
    int64_t j = 0;
    for (; j + 2 * D <= w; j += 2 * D) {
        const DV a = __builtin_convertvector(*reinterpret_cast<const TV*>(row + j), DV);
        const DV b = __builtin_convertvector(*reinterpret_cast<const TV*>(row + j + D), DV);
        DV* out = reinterpret_cast<DV*>(total + j);
        if (Weighted) {
            out[0] += weight * a;
            out[1] += weight * b;
        } else {
            out[0] += a;
            out[1] += b;
        }
    }
    for (; j < w; ++j)
        total[j] += Weighted ? weight * static_cast<double>(row[j]) : static_cast<double>(row[j]);
    total[w] += Weighted ? weight : 1.0;
}

// Rows [0, m) added to their clusters' totals (k, w + 1): the weighted sum of
// the rows, then of their weights. W > 0 fixes the width at compile time, so
// that narrow rows cost a few instructions each; then the odd rows go to a
// second copy of the totals (odd, added in by the caller), which halves the
// chains of dependent additions into each cluster's few totals.
template <typename T, int W>
inline void add_rows(const T* rows, int64_t ld, int m, int64_t width, const int64_t* label,
                     const T* weights, double* totals, double* odd) {
    if (!W) {
        for (int r = 0; r < m; ++r) {
            double* total = totals + label[r] * (width + 1);
            if (weights)
                add_wide_row<T, true>(rows + r * ld, width, static_cast<double>(weights[r]), total);
            else
                add_wide_row<T, false>(rows + r * ld, width, 1.0, total);
        }
        return;
    }
    constexpr int64_t w = W;
    for (int r = 0; r < m; ++r) {
        double* total = ((r & 1) ? odd : totals) + label[r] * (w + 1);
        const T* row = rows + r * ld;
        if (weights) {
            const double weight = static_cast<double>(weights[r]);
            for (int64_t j = 0; j < w; ++j) total[j] += weight * static_cast<double>(row[j]);
            total[w] += weight;
        } else {
            for (int64_t j = 0; j < w; ++j) total[j] += static_cast<double>(row[j]);
            total[w] += 1.0;
        }
    }
}

// The sum over features of row * centroid (Dot) or of (row - centroid)^2,
// each difference taken in T as the data's own arithmetic would, the sum in
// double: kParts running sums that the compiler vectorises, added in a fixed
// order.
template <typename T, bool Dot>
inline double row_sum(const T* row, const T* centroid, int64_t w) {
    constexpr int kParts = 8;
    double parts[kParts] = {};
    int64_t j = 0;
    for (; j + kParts <= w; j += kParts) {
        for (int l = 0; l < kParts; ++l) {
            if (Dot) {
                parts[l] += static_cast<double>(row[j + l]) * static_cast<double>(centroid[j + l]);
            } else {
                const double difference = static_cast<double>(row[j + l] - centroid[j + l]);
                parts[l] += difference * difference;
            }
        }
    }
    for (; j < w; ++j) {
        if (Dot) {
            parts[0] += static_cast<double>(row[j]) * static_cast<double>(centroid[j]);
        } else {
            const double difference = static_cast<double>(row[j] - centroid[j]);
            parts[0] += difference * difference;
        }
    }
    return ((parts[0] + parts[1]) + (parts[2] + parts[3])) +
           ((parts[4] + parts[5]) + (parts[6] + parts[7]));
}

// 1 - cos of a row and a centroid of norm centroid_norm, as
// (|x - c|^2 - (|x| - |c|)^2) / (2 |x| |c|): for unit rows |x - c|^2 / 2,
// whose error is relative, where 1 - x.c keeps the rounding of their unit
// lengths (float32 rows 1e-3 from their centroid measured 1.4x too far). 1
// where either is zeros (no direction). One pass: both sums, in double.
template <typename T>
inline double cosine_distance(const T* row, const T* centroid, double centroid_norm, int64_t w) {
    constexpr int kParts = 8;
    double squares[kParts] = {}, differences[kParts] = {};
    int64_t j = 0;
    for (; j + kParts <= w; j += kParts) {
        for (int l = 0; l < kParts; ++l) {
            const double value = static_cast<double>(row[j + l]);
            const double difference = static_cast<double>(row[j + l] - centroid[j + l]);
            squares[l] += value * value;
            differences[l] += difference * difference;
        }
    }
    for (; j < w; ++j) {
        const double value = static_cast<double>(row[j]);
        const double difference = static_cast<double>(row[j] - centroid[j]);
        squares[0] += value * value;
        differences[0] += difference * difference;
    }
    for (int l = 1; l < kParts; ++l) {
        squares[0] += squares[l];
        differences[0] += differences[l];
    }
    const double row_norm = std::sqrt(squares[0]);
    if (row_norm == 0.0 || centroid_norm == 0.0) return 1.0;  // NaN rows stay NaN
    const double radial = row_norm - centroid_norm;
    return (differences[0] - radial * radial) / (2.0 * row_norm * centroid_norm);
}

// The labels of rows [0, m) of a chunk scored in the row layout, made
// certain (tk_assign_f32's layout 4): keep holds their scores (rows at
// stride kp), rows their rows as scored (centred), measured and references
// the rows and centroids their distances are measured between (see
// assign_rows), root the largest norm of the scored centroids, candidates
// room for k indices.
//
// With u T's unit roundoff and g = (w + 1) u / (1 - (w + 1) u), a score
// fl(fl(|c'|^2) + fl(sum_j -2 c'_j x'_j)), the multiply-adds in one chain per
// centroid, is within 2 g |x'| |c'| + 2u |c'|^2 of |c'|^2 - 2 x'.c' (the
// chain's g sum_j |2 c'_j x'_j|, the norm's and the sum's roundings), and
// centring, x' = fl(x - o) and c' = fl(c - o) each within u of their norms,
// moves |x' - c'|^2 by at most (2u + u^2) (|x'| + |c'|)^2 from |x - c|^2 (the
// |x'|^2 the scores leave out is the same for every centroid): every score
// is within E = 2 g |x'| r + 2.01 u (r^2 + (|x'| + r)^2) of |x - c|^2 less
// that common term, r = root. The nearest centroid thus scores within 2E of
// the lowest score, as only the labelled one does for most rows; where
// others do, the row's distances to each of them from differences (as the
// distances are measured) decide, the first of equal ones. Float32 rows 20
// from the centroids' mean, d=128: 2E = 0.02, where rows of tight clusters
// shared by near-copies of their centre (8 blobs of 0.1, k=64) have a
// median gap of 0.025 to the runner-up.
template <typename T>
inline void certify_chunk(const T* rows, int64_t ld, const T* measured, int64_t ldm,
                          const T* references, int m, int64_t w, int64_t k, int64_t kp,
                          const T* keep, double root, const T* best, int64_t* label,
                          int64_t* candidates) {
    const double unit = static_cast<double>(std::numeric_limits<T>::epsilon()) / 2;
    const double terms = static_cast<double>(w + 1) * unit;
    const double g = terms < 0.5 ? terms / (1.0 - terms) : std::numeric_limits<double>::infinity();
    for (int r = 0; r < m; ++r) {
        const T* row = rows + r * ld;
        const double norm = std::sqrt(row_sum<T, true>(row, row, w));
        const double error = 2.0 * g * norm * root +
                             2.01 * unit * (root * root + (norm + root) * (norm + root));
        // 2E with a margin for the bound's own few roundings in double.
        const double limit = static_cast<double>(best[r]) + 2.02 * error;
        T bound = static_cast<T>(limit);
        if (static_cast<double>(bound) < limit)
            bound = std::nextafter(bound, std::numeric_limits<T>::infinity());
        const T* scores = keep + r * kp;
        int64_t count = 0;
        for (int64_t c = 0; c < k; ++c) count += scores[c] <= bound;
        if (count < 2) continue;
        count = 0;
        for (int64_t c = 0; c < k; ++c) {  // without branches: which is taken is random
            candidates[count] = c;
            count += scores[c] <= bound;
        }
        const T* point = measured + r * ldm;
        double nearest = std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < count; ++i) {
            const int64_t c = candidates[i];
            const double distance = row_sum<T, false>(point, references + c * w, w);
            if (distance < nearest) {
                nearest = distance;
                label[r] = c;
            }
        }
    }
}

// Rows [0, m) at stride ldx less the offset (zero past w, whole vectors)
// into out (rows at stride ldo, whole vectors, on a vector), a vector at a
// time: each value x - o in T, as a centred copy holds it. The compiler's
// loop over the features of each row, of a width known only at run time,
// had cost a Lloyd pass over 100,000 x 32 rows, k=64, 19% of its time.
template <typename T>
inline void centre_rows(const T* rows, int64_t ldx, int m, int64_t w, const T* offset, T* out,
                        int64_t ldo) {
    typedef typename Vec<T>::type V;
    constexpr int L = lanes_of<T>();
    const int64_t whole = w / L * L;
    for (int r = 0; r < m; ++r) {
        const T* row = rows + r * ldx;
        V* to = reinterpret_cast<V*>(out + r * ldo);
        const V* by = reinterpret_cast<const V*>(offset);
        for (int64_t j = 0; j < whole; j += L)
            to[j / L] = *reinterpret_cast<const V*>(row + j) - by[j / L];
        // Nothing past the row is read: it may end the caller's data.
        if (whole < w)
            to[whole / L] = load_head<T>(row + whole, static_cast<int>(w - whole)) - by[whole / L];
    }
}

// The m rows of w values from row `first` of x (at stride ldx) asked into
// the cache: the next chunk, while this one is scored. A chunk copied in one burst
// (centred, or realigned) waited on memory that the tiles' own reads, spread
// over their work, had had fetched ahead: 100,000 x 32, k=64, two threads, a
// Lloyd pass centred as it reads took 1.25-1.3x the time on a centred copy,
// with the next chunk asked for 1.0-1.02x.
template <typename T>
inline void prefetch_rows(const T* x, int64_t ldx, int64_t w, int64_t first, int64_t m) {
    if (m <= 0) return;
    const char* begin = reinterpret_cast<const char*>(x + first * ldx);
    const int64_t bytes = ((m - 1) * ldx + w) * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(begin + b);
}

// Rows [0, n) of one thread: labels and the rest (see tk_assign_f32), with
// the centroids scaled by assign(): (k, w) in the column layout, (w, kp) in
// the row layout, (k, kp) in the dots layout (kp: w rounded up to L); root
// the largest norm of the centroids (layout 4).
template <typename T>
int64_t assign_rows(const T* x, int64_t ldx, int64_t n, int64_t w, const T* offset,
                    const T* scaled, const T* bias, int64_t k, int64_t kp, int columns,
                    const T* centroids, int cosine, const T* weights, const int64_t* previous,
                    int64_t* labels, T* minima, T* distances, double* totals,
                    double* score_sum, const T* given, double root) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::index I;
    constexpr int L = lanes_of<T>();
    if (totals) std::fill(totals, totals + k * (w + 1), 0.0);
    std::vector<double> odd(totals && w <= kNarrowTotals ? k * (w + 1) : 0, 0.0);  // see add_rows
    const bool dots = columns == 3;
    const bool certain = columns == 4;
    const bool blocks = columns == 5;
    if (dots || certain || blocks) columns = 0;
    // Rows per chunk: a column group, or the row tiles that share each panel.
    const int step = columns ? kGroups * L : kChunkRows;
    int64_t changed = 0;
    // Eight running sums: independent chains the compiler vectorises, added
    // in the same order on every run.
    constexpr int kSums = 8;
    double sums[kSums] = {};
    std::vector<T> local(step);
    // Per row of a chunk (see Chunk): L values, L indices and kBlocks * L
    // partial scores.
    Aligned<T> running(columns || dots || blocks ? 0 : step * L * (1 + kBlocks));
    Aligned<typename Vec<T>::lane> running_index(columns || dots || blocks ? 0 : step * L);
    const Chunk<T> chunk{reinterpret_cast<V*>(running.data),
                         reinterpret_cast<I*>(running_index.data),
                         reinterpret_cast<V*>(running.data + step * L)};
    // A transposed column group, (w, kGroups) vectors.
    Aligned<T> transposed(columns ? w * kGroups * L : 0);
    V* xt = reinterpret_cast<V*>(transposed.data);
    // The blocks layout loads a vector of each row: rows that do not start on
    // a vector (the fit's copy keeps a column of ones after each row: d=64,
    // k=8, two threads, 2.3x the time) are copied a chunk at a time to rows
    // that do, as rows are centred.
    const bool realign = blocks && (ldx % L != 0 || reinterpret_cast<uintptr_t>(x) % kBytes != 0);
    // Centred rows start on a vector, whole vectors apart (see centre_rows).
    const int64_t ldc = blocks || offset ? (w + L - 1) / L * L : w;
    Aligned<T> centred(offset || realign ? step * ldc : 0);
    Aligned<T> centre(offset ? ldc : 0);  // the offset, zero past w
    if (offset) std::memcpy(centre.data, offset, static_cast<size_t>(w) * sizeof(T));
    std::vector<T> keep(certain ? step * kp : 0);  // a chunk's scores, see certify_chunk
    std::vector<int64_t> candidates(certain ? k : 0);
    std::vector<double> reference_norms;  // of the centroids, for cosine distances
    for (int64_t start = 0; start < n; start += step) {
        const int m = n - start < step ? static_cast<int>(n - start) : step;
        const T* rows = x + start * ldx;
        int64_t ld = ldx;
        if (offset || realign) {  // centred once here, not in the kernels' inner loops
            if (offset)
                centre_rows<T>(rows, ldx, m, w, centre.data, centred.data, ldc);
            else
                for (int r = 0; r < m; ++r)
                    std::memcpy(centred.data + r * ldc, rows + r * ldx, w * sizeof(T));
            prefetch_rows(x, ldx, w, start + step, std::min<int64_t>(step, n - start - step));
            rows = centred.data;
            ld = ldc;
        }
        T* best = minima ? minima + start : local.data();
        int64_t* label = labels + start;
        if (columns == 2) {
            with_width<kColumnWidths>(w, [&](auto width) {
                column_group<T, decltype(width)::value, true>(rows, ld, m, w, centroids, bias, k,
                                                              xt, best, label);
            });
        } else if (columns) {
            with_width<kColumnWidths>(w, [&](auto width) {
                column_group<T, decltype(width)::value, false>(rows, ld, m, w, scaled, bias, k,
                                                               xt, best, label);
            });
        } else if (dots) {
            with_centroids<kDotsMaxK>(k, [&](auto count) {
                dots_rows<T, decltype(count)::value>(rows, ld, m, w, scaled, kp, bias, best,
                                                     label);
            });
        } else if (blocks) {
            with_centroids<kBlocksMaxK>(k, [&](auto count) {
                block_rows<T, decltype(count)::value>(rows, ld, m, w, scaled, bias, best, label);
            });
        } else {
            tiles<T>(rows, ld, m, w, scaled, bias, kp, chunk, best, label,
                     certain ? keep.data() : nullptr);
            if (certain)
                certify_chunk<T>(rows, ld, given ? x + start * ldx : rows, given ? ldx : ld,
                                 given ? given : centroids, m, w, k, kp, keep.data(), root, best,
                                 label, candidates.data());
        }
        if (previous)
            for (int r = 0; r < m; ++r) changed += previous[start + r] != label[r];
        if (weights) {
            for (int r = 0; r < m; ++r)
                sums[r % kSums] +=
                    static_cast<double>(weights[start + r]) * static_cast<double>(best[r]);
        } else {
            for (int r = 0; r < m; ++r) sums[r % kSums] += static_cast<double>(best[r]);
        }
        if (distances && columns == 2) {
            for (int r = 0; r < m; ++r) distances[start + r] = best[r];
        } else if (distances) {
            // Recomputed from differences for the chosen centroid only: the
            // score's expansion loses digits when a row sits on its centroid.
            // With the centroids as given, from the rows as given: centring
            // rounds both, by more than the distance of a row near its
            // centroid far from the offset.
            const T* measured = given ? x + start * ldx : rows;
            const int64_t ldm = given ? ldx : ld;
            const T* references = given ? given : centroids;
            if (cosine && reference_norms.empty()) {
                reference_norms.resize(k);
                for (int64_t c = 0; c < k; ++c)
                    reference_norms[c] =
                        std::sqrt(row_sum<T, true>(references + c * w, references + c * w, w));
            }
            for (int r = 0; r < m; ++r) {
                const T* row = measured + r * ldm;
                const T* centroid = references + label[r] * w;
                if (cosine) {
                    const double distance =
                        cosine_distance(row, centroid, reference_norms[label[r]], w);
                    distances[start + r] =
                        static_cast<T>(distance < 0.0 ? 0.0 : (distance > 2.0 ? 2.0 : distance));
                } else {
                    distances[start + r] = static_cast<T>(row_sum<T, false>(row, centroid, w));
                }
            }
        }
        if (totals) {  // (k, w + 1): the sums of the rows, then of their weights
            const T* chunk_weights = weights ? weights + start : nullptr;
            with_width<kNarrowTotals>(w, [&](auto width) {
                constexpr int W = decltype(width)::value;
                add_rows<T, W>(rows, ld, m, w, label, chunk_weights, totals,
                               W ? odd.data() : nullptr);
            });
        }
    }
    for (size_t i = 0; i < odd.size(); ++i) totals[i] += odd[i];
    double sum = 0.0;
    for (int l = 0; l < kSums; ++l) sum += sums[l];
    *score_sum = sum;
    return changed;
}

template <typename T>
int64_t assign(const T* x, int64_t ldx, int64_t n, int64_t w, const T* offset,
               const T* centroids, int64_t k, int cosine, int columns, int threads,
               const T* weights, const int64_t* previous, int64_t* labels, T* minima,
               T* distances, double* totals, double* score_sum, const T* given) {
    // The scaled centroids a and their bias (see the top of the file), in
    // the layout's order: aug (k, w); aug (k, kp) in the dots layout, kp
    // being w rounded up to whole vectors and the padding 0; or at (w, kp)
    // in panels of kBlocks vectors of centroids (the last one narrower),
    // each (w, width) contiguous, with +inf biases on the padding.
    const bool dots = columns == 3;
    if (dots && k > kDotsMaxK) return -1;
    const bool certain = columns == 4;  // the row layout, its labels made certain
    if (certain && cosine) return -1;
    if (certain) columns = 0;
    // The blocks layout (5) takes its centroids as the column layout does.
    if (columns == 5 && k > kBlocksMaxK) return -1;
    constexpr int64_t L = lanes_of<T>();
    // The row layout's centroids padded to whole vectors: to 16 they had
    // been, which cost float64 (8 lanes with AVX-512) a vector of padding
    // wherever k mod 16 is 1-8 (k=8: 0.67-0.69x the time without it).
    const int64_t kp = dots ? (w + L - 1) / L * L : columns ? k : (k + L - 1) / L * L;
    constexpr int64_t kPanel = kBlocks * L;
    Aligned<T> scaled(dots ? k * kp : w * kp), biases(dots ? k : kp,
                                                       std::numeric_limits<T>::infinity());
    // A panel at a time (the column layouts: one panel of all k, at
    // stride w or kp): the scaled weights written in order, each centroid's
    // norm summed over j in order, the panel's norms independent of each
    // other.
    const int64_t gang = columns ? k : kPanel;
    const int64_t row_stride = dots ? kp : w;
    std::vector<double> norms(gang);
    double root = 0.0;  // the largest norm of the centroids
    for (int64_t first = 0; first < k; first += gang) {
        const int64_t count = std::min(gang, k - first);
        const int64_t width = columns ? row_stride : std::min(kPanel, kp - first);
        T* panel = scaled.data + first * row_stride;
        std::fill(norms.begin(), norms.end(), 0.0);
        for (int64_t j = 0; j < w; ++j) {
            for (int64_t g = 0; g < count; ++g) {
                const T value = centroids[(first + g) * w + j];
                norms[g] += static_cast<double>(value) * static_cast<double>(value);
                panel[columns ? g * width + j : j * width + g] = cosine ? -value : T(-2) * value;
            }
        }
        for (int64_t g = 0; g < count; ++g) {
            biases.data[first + g] = cosine ? T(0) : static_cast<T>(norms[g]);
            root = std::max(root, norms[g]);
        }
    }
    // Rounded up a little: its root and the sums of squares in double.
    root = std::sqrt(root) * (1.0 + 1e-12);
    const int layout = certain ? 4 : columns;
#if defined(_OPENMP)
    if (threads > 1 && n > 1) {
        // Contiguous ranges of rows on the OpenMP threads PyTorch's own ops
        // run on (the process's libgomp), each with its own totals; combined
        // in thread order, so a thread count always gives the same sums.
        const int64_t size = totals ? k * (w + 1) : 0;
        // Each thread's totals a whole number of cache lines apart (plus
        // one), so no line is written by two threads.
        const int64_t stride = (size + 7) / 8 * 8 + 8;
        std::vector<double> partial(threads * stride), sums(threads, 0.0);
        std::vector<int64_t> changed(threads, 0);
        int used = 1;
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            if (t == 0) used = nt;
            const int64_t start = n * t / nt, stop = n * (t + 1) / nt;
            changed[t] = assign_rows<T>(
                x + start * ldx, ldx, stop - start, w, offset, scaled.data, biases.data, k,
                kp, layout, centroids, cosine, weights ? weights + start : nullptr,
                previous ? previous + start : nullptr, labels + start,
                minima ? minima + start : nullptr, distances ? distances + start : nullptr,
                totals ? partial.data() + t * stride : nullptr, &sums[t], given, root);
        }
        int64_t total_changed = 0;
        double total_sum = 0.0;
        for (int t = 0; t < used; ++t) {
            total_changed += changed[t];
            total_sum += sums[t];
        }
        if (totals) {
            std::copy(partial.begin(), partial.begin() + size, totals);
            for (int t = 1; t < used; ++t)
                for (int64_t i = 0; i < size; ++i) totals[i] += partial[t * stride + i];
        }
        *score_sum = total_sum;
        return total_changed;
    }
#endif
    (void)threads;
    return assign_rows<T>(x, ldx, n, w, offset, scaled.data, biases.data, k, kp, layout,
                          centroids, cosine, weights, previous, labels, minima, distances, totals,
                          score_sum, given, root);
}

}  // namespace

// ---- sparse rows (CSR) -------------------------------------------------------
//
// Lloyd's step on CSR rows in one pass over their stored values, as
// scikit-learn's Cython does: per row, its dots with the k centroids from its
// stored values (the centroids transposed to (d, k), so that each stored value
// reads k contiguous values), the nearest by |c|^2 - 2 x.c (euclidean; ties to
// the lowest index, the first strictly lower score wins, as scikit-learn's
// loop) or by 1 - x.c clamped to [0, 2] (cosine, unit rows), then the row's
// stored values added into that cluster's totals while they are in the cache.

namespace {

constexpr int64_t kSparseTileBytes = 16 * 1024;  // of the centroids' transpose, written at a time

// The dots of one row, stored values [p0, p1), with the NB vectors of B bytes
// of centroids at ct + j * ldk for column j: U chains of multiply-adds over
// the stored values, of NB vectors each (a single chain would wait on the
// latency of each multiply-add), added in a fixed order into out.
template <typename T, int B, int NB, int U, typename I>
inline void row_dots(const I* col, const T* values, int64_t p0, int64_t p1, const T* ct,
                     int64_t ldk, T* out) {
    typedef T V __attribute__((vector_size(B), aligned(sizeof(T))));
    constexpr int L = B / static_cast<int>(sizeof(T));
    V acc[U][NB];
    for (int u = 0; u < U; ++u)
        for (int b = 0; b < NB; ++b) acc[u][b] = V{};
    int64_t p = p0;
    for (; p + U <= p1; p += U) {
        for (int u = 0; u < U; ++u) {
            const T value = values[p + u];
            const T* c = ct + col[p + u] * ldk;
            for (int b = 0; b < NB; ++b) acc[u][b] += *reinterpret_cast<const V*>(c + b * L) * value;
        }
    }
    for (; p < p1; ++p) {
        const T value = values[p];
        const T* c = ct + col[p] * ldk;
        for (int b = 0; b < NB; ++b) acc[0][b] += *reinterpret_cast<const V*>(c + b * L) * value;
    }
    for (int b = 0; b < NB; ++b) {
        V sum = acc[0][b];
        for (int u = 1; u < U; ++u) sum += acc[u][b];
        std::memcpy(out + b * L, &sum, sizeof(sum));
    }
}

// How the dots of a row are taken, from k and the dtype: 16, 32 or kBytes
// bytes, the least holding k centroids, or 0: panels of up to kBlocks whole
// vectors. The centroids are transposed to (d, kp), kp: k rounded up to the
// vector, or to whole vectors for panels.
template <typename T>
inline int sparse_width(int64_t k) {
    for (int bytes = 16; bytes <= kBytes; bytes *= 2)
        if (k * int64_t(sizeof(T)) <= bytes) return bytes;
    return 0;
}

template <typename T>
inline int64_t sparse_stride(int64_t k) {
    const int bytes = sparse_width<T>(k);
    const int64_t lanes = (bytes ? bytes : kBytes) / int64_t(sizeof(T));
    return (k + lanes - 1) / lanes * lanes;
}

// The dots of a row with all kp centroids (see sparse_width).
template <typename T, int Bytes, typename I>
inline void sparse_dots(const I* col, const T* values, int64_t p0, int64_t p1, const T* ct,
                        int64_t kp, T* out) {
    if constexpr (Bytes > 0) {
        row_dots<T, Bytes, 1, 4>(col, values, p0, p1, ct, kp, out);
    } else {
        constexpr int L = kBytes / static_cast<int>(sizeof(T));
        for (int64_t j = 0; j < kp; j += kBlocks * L) {
            switch (std::min<int64_t>(kBlocks, (kp - j) / L)) {
                case kBlocks:
                    row_dots<T, kBytes, kBlocks, 1>(col, values, p0, p1, ct + j, kp, out + j);
                    break;
                case 3:
                    row_dots<T, kBytes, 3, 1>(col, values, p0, p1, ct + j, kp, out + j);
                    break;
                case 2:
                    row_dots<T, kBytes, 2, 2>(col, values, p0, p1, ct + j, kp, out + j);
                    break;
                default:
                    row_dots<T, kBytes, 1, 4>(col, values, p0, p1, ct + j, kp, out + j);
                    break;
            }
        }
    }
}

// f(std::integral_constant<int, width>) for a width of 16, 32 or kBytes
// bytes, else f of 0 (see sparse_width).
template <int Bytes = 16, typename F>
inline void with_sparse_width(int width, F&& f) {
    if constexpr (Bytes > kBytes) {
        f(std::integral_constant<int, 0>{});
    } else {
        if (width == Bytes)
            f(std::integral_constant<int, Bytes>{});
        else
            with_sparse_width<Bytes * 2>(width, f);
    }
}

// A row's stored values [p0, p1), times its weight when there are weights,
// added into its cluster's totals (d + 1 values, the last its weight).
template <typename T, typename I>
inline void add_stored(const I* col, const T* values, int64_t p0, int64_t p1,
                       const double* weights, double weight, double* total, int64_t d) {
    if (weights) {
        for (int64_t p = p0; p < p1; ++p) total[col[p]] += weight * static_cast<double>(values[p]);
    } else {
        for (int64_t p = p0; p < p1; ++p) total[col[p]] += static_cast<double>(values[p]);
    }
    total[d] += weight;
}

// Chains of the sum of distances: row r's in chain r % kSparseSums.
constexpr int kSparseSums = 8;

// The sum of distances [0, n) times weights (when given), in row order
// whatever the thread count.
template <typename T>
double weighted_sum(const T* distances, const double* weights, int64_t n) {
    double sums[kSparseSums] = {};
    for (int64_t r = 0; r < n; ++r)
        sums[r % kSparseSums] += (weights ? weights[r] : 1.0) * static_cast<double>(distances[r]);
    double sum = 0.0;
    for (int l = 0; l < kSparseSums; ++l) sum += sums[l];
    return sum;
}

// Rows [begin, end) of one thread (see sparse_lloyd), Bytes: sparse_width.
template <typename T, int Bytes, typename I>
void sparse_rows_step(const int64_t* crow, const I* col, const T* values, int64_t begin,
                      int64_t end, int64_t d, const T* ct, int64_t kp, const T* bias, int64_t k,
                      int cosine, const T* sq_norms, const double* weights, int64_t* labels,
                      T* distances, double* totals) {
    std::vector<T> dots(kp);
    T* acc = dots.data();
    for (int64_t r = begin; r < end; ++r) {
        const int64_t p0 = crow[r], p1 = crow[r + 1];
        sparse_dots<T, Bytes>(col, values, p0, p1, ct, kp, acc);
        T low = std::numeric_limits<T>::infinity();
        int64_t label = 0;
        for (int64_t j = 0; j < k; ++j) {
            T score;
            if (cosine) {
                score = T(1) - acc[j];
                score = score < T(0) ? T(0) : (score > T(2) ? T(2) : score);
            } else {
                score = bias[j] - T(2) * acc[j];
            }
            if (score < low) {
                low = score;
                label = j;
            }
        }
        // Every score NaN or +inf (overflow): the first centroid, as an argmin.
        const T distance = cosine ? low : std::max(low + sq_norms[r], T(0));
        labels[r] = label;
        distances[r] = distance;
        if (totals)
            add_stored(col, values, p0, p1, weights, weights ? weights[r] : 1.0,
                       totals + label * (d + 1), d);
    }
}

// Columns [j0, j1) of G rows of centroids (row stride d) into the transpose
// (column j at ct + j * kp), and the rows' squares added to their norms in
// column order, one chain per row: G chains in flight.
constexpr int kNormChains = 8;

template <typename T, int G>
inline void transpose_rows(const T* rows, int64_t d, int64_t j0, int64_t j1, T* ct, int64_t kp,
                           double* norms) {
    double norm[G];
    for (int g = 0; g < G; ++g) norm[g] = norms[g];
    for (int64_t j = j0; j < j1; ++j) {
        for (int g = 0; g < G; ++g) {
            const T value = rows[g * d + j];
            ct[j * kp + g] = value;
#if defined(__FMA__)
            // One rounding, as the compiler contracted the column-by-column
            // loop this replaced (the same norms, to the last bit).
            norm[g] = std::fma(static_cast<double>(value), static_cast<double>(value), norm[g]);
#else
            norm[g] += static_cast<double>(value) * static_cast<double>(value);
#endif
        }
    }
    for (int g = 0; g < G; ++g) norms[g] = norm[g];
}

// Columns [j0, j1) of the k centroids (row stride d) into their transpose
// ct (d, kp), the padding lanes 0, and each centroid's squares added to
// norms[c] in column order.
//
// A tile of kSparseTileBytes of the transpose at a time, written from k
// rows of centroids: column by column, each write of the transpose
// touched another cache line, and the (d, kp) lines fell out of the
// cache before the next centroid's turn (one row, float64, one thread,
// interleaved calls: k=20, d=50,000 3.7 ms a call, tiled 1.0; k=100,
// d=100,000 84 ms, tiled 60; the dots of a mini-batch of 1,024 rows
// take 0.15 ms). Within a tile, kNormChains centroids at a time: their
// norms are independent chains of multiply-adds, where one centroid's
// chain at a time waited on the latency of each (a mini-batch of 1,024
// rows, k=20, d=50,000, one thread: float32 0.81 ms a call, 0.37 so;
// float64 0.86 ms, 0.63; the buffer is no longer filled first either).
template <typename T>
void transpose_columns(const T* centroids, int64_t k, int64_t d, int64_t j0, int64_t j1, T* ct,
                       int64_t kp, double* norms) {
    const int64_t tile = std::max<int64_t>(8, kSparseTileBytes / (kp * int64_t(sizeof(T))));
    for (int64_t t0 = j0; t0 < j1; t0 += tile) {
        const int64_t t1 = std::min(j1, t0 + tile);
        int64_t c = 0;
        for (; c + kNormChains <= k; c += kNormChains)
            transpose_rows<T, kNormChains>(centroids + c * d, d, t0, t1, ct + c, kp, &norms[c]);
        // The rest 4, 2 and 1 at a time (k=7: one chain at a time was 1.2x
        // the time of the column-by-column loop).
        if (c + 4 <= k) {
            transpose_rows<T, 4>(centroids + c * d, d, t0, t1, ct + c, kp, &norms[c]);
            c += 4;
        }
        if (c + 2 <= k) {
            transpose_rows<T, 2>(centroids + c * d, d, t0, t1, ct + c, kp, &norms[c]);
            c += 2;
        }
        if (c < k) transpose_rows<T, 1>(centroids + c * d, d, t0, t1, ct + c, kp, &norms[c]);
        for (int64_t j = t0; j < t1; ++j)
            for (int64_t p = k; p < kp; ++p) ct[j * kp + p] = T(0);
    }
}

// Columns per block of the centroids' norms: each block's squares are
// summed in one chain per centroid, then the blocks' sums in block order, so
// that threads can transpose blocks apart and the norms do not depend on
// how many there are (one thread transposed all k=20 x 50,000 float64
// centroids of a mini-batch step: 1.0 of its 2.4 ms).
constexpr int64_t kNormBlockColumns = 4096;

// The clusters [c0, c1) of totals (k, d + 1), zeroed, then the stored values
// of their rows (by labels) added in row order, as sparse_rows_step adds
// them: the same sums whatever thread takes a cluster.
template <typename T, typename I>
void add_clusters(const int64_t* crow, const I* col, const T* values, int64_t n, int64_t d,
                  const double* weights, const int64_t* labels, int64_t c0, int64_t c1,
                  double* totals) {
    std::fill(totals + c0 * (d + 1), totals + c1 * (d + 1), 0.0);
    for (int64_t r = 0; r < n; ++r) {
        const int64_t label = labels[r];
        if (label < c0 || label >= c1) continue;
        add_stored(col, values, crow[r], crow[r + 1], weights, weights ? weights[r] : 1.0,
                   totals + label * (d + 1), d);
    }
}

template <typename T, typename I>
void sparse_lloyd(const int64_t* crow, const I* col, const T* values, int64_t n, int64_t d,
                  const T* centroids, int64_t k, int cosine, int threads, const T* sq_norms,
                  const double* weights, int64_t* labels, T* distances, double* totals,
                  double* score_sum) {
    // The centroids transposed, (d, k), and their squared norms summed in
    // double (see kNormBlockColumns), rounded once.
    const int64_t kp = sparse_stride<T>(k);
    // Not filled first: every value, the padding lanes' zeros too, is
    // written below (the fill was a pass of its own over d * kp values).
    std::unique_ptr<T[]> storage(new T[d * kp + 64 / sizeof(T)]);
    T* ct = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) &
                                 ~uintptr_t(63));
    const int64_t blocks = std::max<int64_t>(1, (d + kNormBlockColumns - 1) / kNormBlockColumns);
    std::vector<double> block_norms(blocks * k, 0.0);
    auto transpose_block = [&](int64_t b) {
        transpose_columns(centroids, k, d, b * kNormBlockColumns,
                          std::min(d, (b + 1) * kNormBlockColumns), ct, kp, &block_norms[b * k]);
    };
#if defined(_OPENMP)
    if (threads > 1 && blocks > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t b = 0; b < blocks; ++b) transpose_block(b);
    } else {
        for (int64_t b = 0; b < blocks; ++b) transpose_block(b);
    }
#else
    for (int64_t b = 0; b < blocks; ++b) transpose_block(b);
#endif
    std::vector<T> bias(k);
    for (int64_t c = 0; c < k; ++c) {
        double norm = block_norms[c];
        for (int64_t b = 1; b < blocks; ++b) norm += block_norms[b * k + c];
        bias[c] = static_cast<T>(norm);
    }
    const int64_t size = totals ? k * (d + 1) : 0;
    auto run = [&](int64_t begin, int64_t end, double* out) {
        auto step = [&](auto bytes) {
            sparse_rows_step<T, decltype(bytes)::value>(crow, col, values, begin, end, d, ct, kp,
                                                        bias.data(), k, cosine, sq_norms,
                                                        weights, labels, distances, out);
        };
        with_sparse_width(sparse_width<T>(k), step);
    };
#if defined(_OPENMP)
    if (threads > 1 && n > 1) {
        const int64_t stored = crow[n] - crow[0];
        // Totals that outweigh the stored values (a mini-batch of many
        // features): each thread's own totals to zero and combine had cost
        // more than the rows (k=20, d=50,000, 1,024 rows of 50 values: 0.7
        // of a 2.4 ms call). The rows are labelled first, then each thread
        // adds the rows of its own clusters, in row order: the sums one
        // thread makes.
        const bool by_cluster = totals && size * (threads - 1) > stored;
        // Otherwise ranges of rows holding equal shares of the stored
        // values, each thread with its own totals (the first writes the
        // caller's), combined in thread order: a thread count always gives
        // the same sums.
        const int64_t stride = (size + 7) / 8 * 8 + 8;
        std::vector<double> partial(totals && !by_cluster ? (threads - 1) * stride : 0, 0.0);
        if (totals && !by_cluster) std::fill(totals, totals + size, 0.0);
        int used = 1;
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            if (t == 0) used = nt;
            auto split = [&](int part) -> int64_t {
                if (part == 0) return 0;
                if (part == nt) return n;
                const int64_t target = crow[0] + stored * part / nt;
                return std::lower_bound(crow, crow + n + 1, target) - crow;
            };
            const int64_t begin = std::min(split(t), n), end = std::min(split(t + 1), n);
            double* out = !totals || by_cluster ? nullptr
                          : t == 0              ? totals
                                                : partial.data() + (t - 1) * stride;
            run(begin, std::max(begin, end), out);
            if (by_cluster) {
#pragma omp barrier
                add_clusters(crow, col, values, n, d, weights, labels, k * t / nt,
                             k * (t + 1) / nt, totals);
            }
        }
        if (totals && !by_cluster)
            for (int t = 1; t < used; ++t)
                for (int64_t i = 0; i < size; ++i) totals[i] += partial[(t - 1) * stride + i];
    } else
#endif
    {
        (void)threads;
        if (totals) std::fill(totals, totals + size, 0.0);
        run(0, n, totals);
    }
    // After the rows, in row order: threads' own sums depended on where
    // their rows began.
    *score_sum = weighted_sum(distances, weights, n);
}

// sparse_lloyd with the column indices of their width (narrow_col: int32).
template <typename T>
void sparse_lloyd_of_width(const int64_t* crow, const void* col, int narrow_col,
                           const T* values, int64_t n, int64_t d, const T* centroids, int64_t k,
                           int cosine, int threads, const T* sq_norms, const double* weights,
                           int64_t* labels, T* distances, double* totals, double* score_sum) {
    if (narrow_col)
        sparse_lloyd<T>(crow, static_cast<const int32_t*>(col), values, n, d, centroids, k,
                        cosine, threads, sq_norms, weights, labels, distances, totals,
                        score_sum);
    else
        sparse_lloyd<T>(crow, static_cast<const int64_t*>(col), values, n, d, centroids, k,
                        cosine, threads, sq_norms, weights, labels, distances, totals,
                        score_sum);
}

}  // namespace

extern "C" {

// Lloyd's step on CSR rows: crow (n + 1), col (nnz; int32 where narrow_col,
// else int64: 12 bytes read per stored float64 value rather than 16) and
// values (nnz) of n rows of d features; centroids (k, d); cosine: 0 euclidean, 1 cosine (unit
// rows); threads: OpenMP threads to split the rows over; sq_norms (n), the
// rows' squared norms (euclidean; unread for cosine); weights (n) or null.
// Out: labels (n), the nearest centroid; distances (n), the squared distance
// |x|^2 + |c|^2 - 2 x.c clamped at 0 (cosine: 1 - x.c clamped to [0, 2]);
// totals (k, d + 1) or null, per cluster the weighted sum of its rows and
// the sum of their weights; score_sum, the weighted sum of the distances.
void tk_sparse_lloyd_f32(const int64_t* crow, const void* col, int narrow_col,
                         const float* values, int64_t n, int64_t d, const float* centroids,
                         int64_t k, int cosine, int threads, const float* sq_norms,
                         const double* weights, int64_t* labels, float* distances,
                         double* totals, double* score_sum) {
    sparse_lloyd_of_width<float>(crow, col, narrow_col, values, n, d, centroids, k, cosine,
                                 threads, sq_norms, weights, labels, distances, totals,
                                 score_sum);
}

void tk_sparse_lloyd_f64(const int64_t* crow, const void* col, int narrow_col,
                         const double* values, int64_t n, int64_t d, const double* centroids,
                         int64_t k, int cosine, int threads, const double* sq_norms,
                         const double* weights, int64_t* labels, double* distances,
                         double* totals, double* score_sum) {
    sparse_lloyd_of_width<double>(crow, col, narrow_col, values, n, d, centroids, k, cosine,
                                  threads, sq_norms, weights, labels, distances, totals,
                                  score_sum);
}

}  // extern "C"

extern "C" {

// Bumped whenever the signature or meaning of an entry point changes.
int tk_abi_version() { return 12; }

int tk_vector_bytes() { return kBytes; }

// How the column layout transposes a group of rows of d features (float64
// when wide, else float32): 1 by gather instructions (AVX-512, not on AMD's
// CPUs; see fast_gathers), 2 by shuffles in registers (see shuffled), 0
// copied element by element.
int tk_column_rows(int64_t d, int wide) {
#if defined(__AVX512F__)
    if (fast_gathers()) return 1;
#endif
    return (wide ? shuffled<double>(d) : shuffled<float>(d)) ? 2 : 0;
}

// Whether threads > 1 runs on OpenMP threads (built with -fopenmp).
int tk_openmp() {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

// x (n, d) rows at stride ldx; offset (d) or null; centroids (k, d); cosine:
// 0 euclidean, 1 cosine; columns: 0 rows layout, 1 columns layout, 2 columns
// layout scoring squared distances from differences (euclidean only; the
// lowest scores are then the distances, and score_sum their sum), 3 dots
// layout (k <= kDotsMaxK, else nothing is done and -1 returned), 4 row
// layout with each label made certain, the nearest centroid (euclidean only,
// else -1; see certify_chunk: centroids must be given - offset rounded once,
// or offset null), its minima still the lowest scores; threads:
// OpenMP threads to split the rows over (1: the calling thread); weights (n)
// or null; previous (n) or null. Out: labels (n); minima (n) or null, the
// lowest scores; distances (n) or null, each row's squared euclidean distance
// (cosine: 1 - cos) to its centroid, from differences; totals (k, d + 1) or
// null, per cluster the weighted sum of its rows (less the offset) and the
// sum of their weights; score_sum, the weighted sum of the lowest scores;
// given (k, d) or null, the centroids before centring (centroids less
// offset): the distances are then measured between the rows of x and these,
// not between the centred rows and centroids (layouts 0, 1 and 3).
// Returns the number of labels that differ from previous.
int64_t tk_assign_f32(const float* x, int64_t ldx, int64_t n, int64_t d, const float* offset,
                      const float* centroids, int64_t k, int cosine, int columns, int threads,
                      const float* weights, const int64_t* previous, int64_t* labels,
                      float* minima, float* distances, double* totals,
                      double* score_sum, const float* given) {
    return assign<float>(x, ldx, n, d, offset, centroids, k, cosine, columns, threads, weights,
                         previous, labels, minima, distances, totals, score_sum, given);
}

int64_t tk_assign_f64(const double* x, int64_t ldx, int64_t n, int64_t d, const double* offset,
                      const double* centroids, int64_t k, int cosine, int columns, int threads,
                      const double* weights, const int64_t* previous, int64_t* labels,
                      double* minima, double* distances, double* totals,
                      double* score_sum, const double* given) {
    return assign<double>(x, ldx, n, d, offset, centroids, k, cosine, columns, threads, weights,
                          previous, labels, minima, distances, totals, score_sum, given);
}

}  // extern "C"

// ---- k-means++ candidates (functional/init.py) -------------------------------
//
// One pass over the rows per k-means++ step: each row's squared euclidean
// distances (cosine: 1 - cos) to m candidates, lowered to the row's closest
// distance so far, written out (the chosen candidate's become the next
// closest) and summed, weighted, into each candidate's potential. Lanes hold
// features, as in the dots layout: a row is read once for all candidates.

namespace {

// Candidates whose features fit in the L1 cache are scored all together
// (up to kSeedGroup), a row at a time: each row is loaded once. Larger ones
// come from the L2 cache: then kSeedWideGroup of them at a time against
// kSeedWideRows rows, each load of a candidate serving several rows. One
// thread, AVX-512, time of the choice made over the other's: 20,000 x 1,024,
// 7 candidates, float32 0.8-0.9, float64 0.5-0.6; 100,000 x 128, 8
// candidates, float32 0.2, float64 0.5-0.6.
constexpr int kSeedGroup = 8;
constexpr int kSeedWideGroup = 2;
constexpr int kSeedWideRows = 4;
constexpr int64_t kSeedL1Bytes = 24 * 1024;
constexpr int64_t kSeedChunkBytes = 64 * 1024;  // of rows, scored against every group in turn

// R rows against the G candidates at aug (G, wp), zero past w: the
// distances, lowered to closest, into out (at stride ldo per candidate) when
// given, and their weighted sums added to total (G).
template <typename T, int R, int G>
inline void seed_tile(const T* x, int64_t ldx, int64_t w, const T* offset, const T* x_sq,
                      const T* aug, int64_t wp, const T* p_sq, const T* closest,
                      const T* weights, int cosine, T* out, int64_t ldo, double* total) {
    typedef typename Vec<T>::type V;
    constexpr int L = lanes_of<T>();
    constexpr int kSums = (R * G + L - 1) / L * L;
    V acc[R][G];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < G; ++c) acc[r][c] = V{};
    int64_t j = 0;
    for (; j + L <= w; j += L) {
        V value[R];
        for (int r = 0; r < R; ++r) value[r] = *reinterpret_cast<const V*>(x + r * ldx + j);
        if (offset) {  // the rows centred as they are read: as a centred copy holds them
            const V o = *reinterpret_cast<const V*>(offset + j);
            for (int r = 0; r < R; ++r) value[r] -= o;
        }
        for (int c = 0; c < G; ++c) {
            const V a = *reinterpret_cast<const V*>(aug + c * wp + j);
            for (int r = 0; r < R; ++r) acc[r][c] += value[r] * a;
        }
    }
    if (j < w) {
        V value[R];
        for (int r = 0; r < R; ++r) value[r] = load_head<T>(x + r * ldx + j, static_cast<int>(w - j));
        if (offset) {  // zero past w, as the values
            const V o = *reinterpret_cast<const V*>(offset + j);
            for (int r = 0; r < R; ++r) value[r] -= o;
        }
        for (int c = 0; c < G; ++c) {
            const V a = *reinterpret_cast<const V*>(aug + c * wp + j);
            for (int r = 0; r < R; ++r) acc[r][c] += value[r] * a;
        }
    }
    T dots[kSums];
    lane_sums<T, R * G>(&acc[0][0], dots);
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < G; ++c) {
            // As PyTorch's path rounds them: (|p|^2 - 2 x.p) + |x|^2, at least 0;
            // 1 - x.p within [0, 2] for cosine.
            const T dot = dots[r * G + c];
            T distance = cosine ? std::min(std::max(T(1) - dot, T(0)), T(2))
                                : std::max(p_sq[c] - T(2) * dot + x_sq[r], T(0));
            distance = std::min(distance, closest[r]);
            if (out) out[c * ldo + r] = distance;
            total[c] += static_cast<double>(weights ? distance * weights[r] : distance);
        }
    }
}

// Rows [0, rows) against G candidates (see seed_tile), R rows at a time,
// then one at a time; their sums added to sums (G).
template <typename T, int R, int G>
inline void seed_group(const T* x, int64_t ldx, int64_t rows, int64_t w, const T* offset,
                       const T* x_sq, const T* aug, int64_t wp, const T* p_sq, const T* closest,
                       const T* weights, int cosine, T* out, int64_t ldo, double* sums) {
    double total[G] = {};
    int64_t i = 0;
    for (; i + R <= rows; i += R)
        seed_tile<T, R, G>(x + i * ldx, ldx, w, offset, x_sq ? x_sq + i : nullptr, aug, wp,
                           p_sq, closest + i, weights ? weights + i : nullptr, cosine,
                           out ? out + i : nullptr, ldo, total);
    for (; i < rows; ++i)
        seed_tile<T, 1, G>(x + i * ldx, ldx, w, offset, x_sq ? x_sq + i : nullptr, aug, wp,
                           p_sq, closest + i, weights ? weights + i : nullptr, cosine,
                           out ? out + i : nullptr, ldo, total);
    for (int c = 0; c < G; ++c) sums[c] += total[c];
}

// f(std::integral_constant<int, g>) for g in [1, Max].
template <int Max, int G = 1, typename F>
inline void with_seed_group(int64_t g, F&& f) {
    if constexpr (G <= Max) {
        if (g == G)
            f(std::integral_constant<int, G>{});
        else
            with_seed_group<Max, G + 1>(g, f);
    }
}

template <typename T>
void seed_scores(const T* x, int64_t ldx, int64_t n, int64_t w, const T* offset, const T* x_sq,
                 const int64_t* index, int64_t m, const T* closest, const T* weights, int cosine,
                 int threads, T* out, int64_t ldo, double* potentials) {
    constexpr int L = lanes_of<T>();
    const int64_t wp = (w + L - 1) / L * L;
    std::vector<T> aug(static_cast<size_t>(m * wp), T(0));
    std::vector<T> p_sq(static_cast<size_t>(m), T(0));
    // The offset padded with zeros to whole vectors, so that the rows' last
    // partial vector is centred as the rest.
    Aligned<T> centre(offset ? wp : 0);
    if (offset) std::memcpy(centre.data, offset, static_cast<size_t>(w) * sizeof(T));
    const T* o = offset ? centre.data : nullptr;
    for (int64_t c = 0; c < m; ++c) {
        T* candidate = aug.data() + c * wp;
        const T* row = x + index[c] * ldx;
        for (int64_t j = 0; j < w; ++j) candidate[j] = offset ? row[j] - offset[j] : row[j];
        if (!cosine) p_sq[c] = x_sq[index[c]];
    }
    const int64_t chunk = std::max<int64_t>(
        16, kSeedChunkBytes / std::max<int64_t>(1, w * static_cast<int64_t>(sizeof(T))));
    const int64_t chunks = (n + chunk - 1) / chunk;
    // Each chunk's sums apart, added in chunk order at the end: the same
    // potentials whatever the number of threads.
    std::vector<double> partial(static_cast<size_t>(chunks * m), 0.0);
    const bool wide = std::min<int64_t>(m, kSeedGroup) * wp * static_cast<int64_t>(sizeof(T)) >
                      kSeedL1Bytes;
    auto score = [&](int64_t b) {
        const int64_t start = b * chunk, rows = std::min(chunk, n - start);
        const T* chunk_sq = cosine ? nullptr : x_sq + start;
        const T* chunk_weights = weights ? weights + start : nullptr;
        for (int64_t c0 = 0; c0 < m; c0 += wide ? kSeedWideGroup : kSeedGroup) {
            T* chunk_out = out ? out + c0 * ldo + start : nullptr;
            double* sums = partial.data() + b * m + c0;
            auto group = [&](auto r, auto g) {
                seed_group<T, decltype(r)::value, decltype(g)::value>(
                    x + start * ldx, ldx, rows, w, o, chunk_sq, aug.data() + c0 * wp, wp,
                    p_sq.data() + c0, closest + start, chunk_weights, cosine, chunk_out, ldo,
                    sums);
            };
            if (wide)
                with_seed_group<kSeedWideGroup>(std::min<int64_t>(kSeedWideGroup, m - c0), [&](auto g) {
                    group(std::integral_constant<int, kSeedWideRows>{}, g);
                });
            else
                with_seed_group<kSeedGroup>(std::min<int64_t>(kSeedGroup, m - c0), [&](auto g) {
                    group(std::integral_constant<int, 1>{}, g);
                });
        }
    };
#if defined(_OPENMP)
    if (threads > 1 && chunks > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t b = 0; b < chunks; ++b) score(b);
    } else {
        for (int64_t b = 0; b < chunks; ++b) score(b);
    }
#else
    (void)threads;
    for (int64_t b = 0; b < chunks; ++b) score(b);
#endif
    for (int64_t c = 0; c < m; ++c) potentials[c] = 0.0;
    for (int64_t b = 0; b < chunks; ++b)
        for (int64_t c = 0; c < m; ++c) potentials[c] += partial[b * m + c];
}

}  // namespace

extern "C" {

// x (n, d) rows at stride ldx; offset (d) or null, subtracted from every
// row as it is read (the rows of a centred copy without the copy; the
// candidates' too); x_sq (n) their squared norms, less the offset (ignored
// for cosine, unit rows); index (m), the candidates' rows; closest (n),
// each row's distance to its nearest centre so far; weights (n) or null;
// cosine: 0 euclidean, 1 cosine (1 - x.p); threads: OpenMP threads. Out:
// out (m, ldo) or null, each candidate's distances lowered to closest (out
// may be closest itself when m = 1); potentials (m) float64, their weighted
// sums.
void tk_seed_scores_f32(const float* x, int64_t ldx, int64_t n, int64_t d, const float* offset,
                        const float* x_sq, const int64_t* index, int64_t m, const float* closest,
                        const float* weights, int cosine, int threads, float* out, int64_t ldo,
                        double* potentials) {
    seed_scores<float>(x, ldx, n, d, offset, x_sq, index, m, closest, weights, cosine, threads,
                       out, ldo, potentials);
}

void tk_seed_scores_f64(const double* x, int64_t ldx, int64_t n, int64_t d, const double* offset,
                        const double* x_sq, const int64_t* index, int64_t m,
                        const double* closest, const double* weights, int cosine, int threads,
                        double* out, int64_t ldo, double* potentials) {
    seed_scores<double>(x, ldx, n, d, offset, x_sq, index, m, closest, weights, cosine, threads,
                        out, ldo, potentials);
}

}  // extern "C"
