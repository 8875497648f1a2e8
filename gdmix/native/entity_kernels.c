/* Newton's method for many tiny L2 logistic regressions, one entity at a time, fused.

   The same algorithm as gdmix/solvers/batched_newton.py (solve_batch): damped Newton steps on
   the intercept and the coefficients, the intercept eliminated by its Schur complement, the
   step capped at MAX_LOGIT_STEP in logit units, a backtracking Armijo search that also accepts
   a change within float64 round-off, and the same stopping rule (max |gradient| over
   max(1, total weight) at most tol). An entity with fewer rows than features is solved in its
   row space (beta = F'a, an n x n system); otherwise in its q x q primal system.

   What numpy cannot do cheaply for an entity of two rows is avoided here: no padding to a
   batch's shape, no dense batch arrays, no per-call overhead per small matrix. Each entity's
   rows are read from the bag's CSR through the entity layout (a block of entities' at a time,
   gathered into contiguous buffers first) and its answer written to its own slots, so separate
   calls on disjoint entities may run on separate threads. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARMIJO 1e-4
#define MAX_HALVINGS 60
#define MAX_LOGIT_STEP 20.0
#define EPSILON 2.220446049250313e-16

static double expit(double z) { return 1.0 / (1.0 + exp(-z)); }

static double log_loss(double z, double y) {  /* logaddexp(0, y > 0 ? -z : z), as numpy computes it */
    double t = y > 0 ? -z : z;
    return t > 0 ? t + log1p(exp(-t)) : log1p(exp(t));
}

/* Solve A X = B in place (A: m x m, row-major, destroyed; B: m x k, row-major), partial pivoting. */
static void lu_solve(double *a, double *b, int64_t m, int64_t k) {
    for (int64_t col = 0; col < m; col++) {
        int64_t pivot = col;
        for (int64_t r = col + 1; r < m; r++)
            if (fabs(a[r * m + col]) > fabs(a[pivot * m + col])) pivot = r;
        if (pivot != col) {
            for (int64_t j = 0; j < m; j++) { double t = a[col * m + j]; a[col * m + j] = a[pivot * m + j]; a[pivot * m + j] = t; }
            for (int64_t j = 0; j < k; j++) { double t = b[col * k + j]; b[col * k + j] = b[pivot * k + j]; b[pivot * k + j] = t; }
        }
        double d = a[col * m + col];
        for (int64_t r = col + 1; r < m; r++) {
            double f = a[r * m + col] / d;
            if (f == 0.0) continue;
            for (int64_t j = col + 1; j < m; j++) a[r * m + j] -= f * a[col * m + j];
            for (int64_t j = 0; j < k; j++) b[r * k + j] -= f * b[col * k + j];
        }
    }
    for (int64_t col = m - 1; col >= 0; col--) {
        double d = a[col * m + col];
        for (int64_t j = 0; j < k; j++) {
            double t = b[col * k + j];
            for (int64_t c = col + 1; c < m; c++) t -= a[col * m + c] * b[c * k + j];
            b[col * k + j] = t / d;
        }
    }
}

/* LAPACK for the rare large system (an entity with dozens to hundreds of rows and features): the
   blocked factorisations are several times faster than the plain loops there, which win below
   LAPACK_MIN_SIDE (no call overhead, no transposes). The routines are scipy's C-callable wrappers
   (scipy.linalg.cython_lapack), handed over once by the loader through use_lapack; 32-bit ints,
   column-major. Without them every size takes the loops. */
#define LAPACK_MIN_SIDE 40
typedef void (*potrf_fn)(char *, int *, double *, int *, int *);
typedef void (*potrs_fn)(char *, int *, int *, double *, int *, double *, int *, int *);
typedef void (*getrf_fn)(int *, int *, double *, int *, int *, int *);
typedef void (*getrs_fn)(char *, int *, int *, double *, int *, int *, double *, int *, int *);
static potrf_fn lapack_potrf;
static potrs_fn lapack_potrs;
static getrf_fn lapack_getrf;
static getrs_fn lapack_getrs;

void use_lapack(void *potrf, void *potrs, void *getrf, void *getrs) {
    lapack_potrf = (potrf_fn)potrf;
    lapack_potrs = (potrs_fn)potrs;
    lapack_getrf = (getrf_fn)getrf;
    lapack_getrs = (getrs_fn)getrs;
}

/* b (m x k, row-major) to and from LAPACK's column-major layout in scratch. */
static void to_columns(const double *b, double *scratch, int64_t m, int64_t k) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++) scratch[j * m + i] = b[i * k + j];
}

static void from_columns(const double *scratch, double *b, int64_t m, int64_t k) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++) b[i * k + j] = scratch[j * m + i];
}

/* A X = B by LAPACK's LU: the row-major A is the column-major A', so its factors solve A' X = B
   transposed ('T'). Returns 0 when A is singular (B is then left as it was). */
static int lapack_lu_solve(double *a, double *b, int64_t m, int64_t k, double *scratch, int *pivots) {
    int n = (int)m, nrhs = (int)k, info = 0;
    lapack_getrf(&n, &n, a, &n, pivots, &info);
    if (info != 0) return 0;
    to_columns(b, scratch, m, k);
    char trans = 'T';
    lapack_getrs(&trans, &n, &nrhs, a, &n, pivots, scratch, &n, &info);
    from_columns(scratch, b, m, k);
    return info == 0;
}

/* A X = B for symmetric A by LAPACK's Cholesky; 0 if A is not positive definite. */
static int lapack_cholesky_solve(double *a, double *b, int64_t m, int64_t k, double *scratch) {
    int n = (int)m, nrhs = (int)k, info = 0;
    char upper = 'U';
    lapack_potrf(&upper, &n, a, &n, &info);
    if (info != 0) return 0;
    to_columns(b, scratch, m, k);
    lapack_potrs(&upper, &n, &nrhs, a, &n, scratch, &n, &info);
    from_columns(scratch, b, m, k);
    return info == 0;
}

typedef struct {
    int64_t n, q, m;          /* rows, features, unknowns besides the intercept (n: row space, q: primal) */
    int row_space;
    double *f, *gram, *y, *w, *o, *system, *rhs, *nz_val;
    int64_t *nz_col, *row_ptr;  /* the entity's non-zeros row by row: local column and value */
    double *theta, *z, *dtheta, *dz, *trial_theta, *trial_z, *work;
    double l2, l0, total_weight;
    double *lapack_scratch;  /* 2 x side, for LAPACK's column-major right-hand sides */
    int *pivots;             /* side */
} Entity;

static int cholesky_solve(double *a, double *b, int64_t m, int64_t k);

static int use_lapack_for(int64_t m) { return m >= LAPACK_MIN_SIDE && lapack_potrf != NULL; }

/* A X = B (A: m x m, row-major, destroyed), by LAPACK where it pays, else by the loops. For a
   singular A, X is NaN (the loops divide by the zero pivot), which the line search refuses. */
static void solve_general(Entity *e, double *a, double *b, int64_t m, int64_t k) {
    if (!use_lapack_for(m)) {
        lu_solve(a, b, m, k);
        return;
    }
    if (!lapack_lu_solve(a, b, m, k, e->lapack_scratch, e->pivots))
        for (int64_t i = 0; i < m * k; i++) b[i] = NAN;
}

/* A X = B for symmetric positive definite A (both triangles filled, destroyed); 0 if a pivot is
   not positive (then A must be rebuilt: its factorisation was under way). */
static int solve_positive_definite(Entity *e, double *a, double *b, int64_t m, int64_t k) {
    if (use_lapack_for(m)) return lapack_cholesky_solve(a, b, m, k, e->lapack_scratch);
    return cholesky_solve(a, b, m, k);
}

/* out = F'x (q long), from the sparse rows. */
static void transpose_times(const Entity *e, const double *x, double *out) {
    memset(out, 0, e->q * sizeof(double));
    for (int64_t i = 0; i < e->n; i++)
        for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) out[e->nz_col[p]] += e->nz_val[p] * x[i];
}

/* system = F'SF + l2 I (q x q), summed over the sparse rows: nnz(row)^2 per row, not q^2. */
static void primal_system(Entity *e, const double *s) {
    int64_t q = e->q;
    memset(e->system, 0, q * q * sizeof(double));
    for (int64_t i = 0; i < e->n; i++)
        for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) {
            double scaled = s[i] * e->nz_val[p];
            double *line = e->system + e->nz_col[p] * q;
            for (int64_t t = e->row_ptr[i]; t < e->row_ptr[i + 1]; t++) line[e->nz_col[t]] += scaled * e->nz_val[t];
        }
    for (int64_t j = 0; j < q; j++) e->system[j * q + j] += e->l2;
}

/* Solve A X = B in place for symmetric positive definite A (both triangles filled); 0 if a pivot is
   not positive. A = U'U is factored into the upper triangle row by row: every update is a
   contiguous multiply-add over a row (vectorised), none a dot-product reduction. */
static int cholesky_solve(double *a, double *b, int64_t m, int64_t k) {
    for (int64_t j = 0; j < m; j++) {
        double *uj = a + j * m, d = uj[j];
        if (!(d > 0.0)) return 0;
        d = sqrt(d);
        uj[j] = d;
        for (int64_t c = j + 1; c < m; c++) uj[c] /= d;
        for (int64_t r = j + 1; r < m; r++) {
            double f = uj[r], *ur = a + r * m;
            if (f == 0.0) continue;
            for (int64_t c = r; c < m; c++) ur[c] -= f * uj[c];
        }
    }
    for (int64_t j = 0; j < k; j++) {
        for (int64_t c = 0; c < m; c++) {  /* U'y = b, column by column */
            double y = b[c * k + j] / a[c * m + c];
            b[c * k + j] = y;
            for (int64_t r = c + 1; r < m; r++) b[r * k + j] -= a[c * m + r] * y;
        }
        for (int64_t r = m - 1; r >= 0; r--) {  /* U x = y */
            double t = b[r * k + j];
            for (int64_t c = r + 1; c < m; c++) t -= a[r * m + c] * b[c * k + j];
            b[r * k + j] = t / a[r * m + r];
        }
    }
    return 1;
}

static double objective(const Entity *e, double b, const double *theta, const double *z) {
    double loss = 0.0, quadratic = 0.0;
    for (int64_t i = 0; i < e->n; i++) loss += e->w[i] * log_loss(z[i], e->y[i]);
    if (e->row_space) {
        for (int64_t i = 0; i < e->n; i++) {
            double t = 0.0;
            for (int64_t j = 0; j < e->n; j++) t += e->gram[i * e->n + j] * theta[j];
            quadratic += theta[i] * t;
        }
    } else {
        for (int64_t j = 0; j < e->q; j++) quadratic += theta[j] * theta[j];
    }
    return loss + 0.5 * (e->l0 * b * b + e->l2 * quadratic);
}

static void predictor(const Entity *e, double b, const double *theta, double *z) {
    for (int64_t i = 0; i < e->n; i++) {
        double t = b + e->o[i];
        if (e->row_space) for (int64_t j = 0; j < e->n; j++) t += e->gram[i * e->n + j] * theta[j];
        else for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) t += e->nz_val[p] * theta[e->nz_col[p]];
        z[i] = t;
    }
}

static double floor_schur(double schur, double total_weight) {
    double least = 1e-12 * (total_weight > 1.0 ? total_weight : 1.0);
    return schur > least ? schur : least;
}

/* The stopping rule: max |gradient| over max(1, total weight) at most tol. */
static int converged_at(double gmax, double scale, double tol) { return gmax / scale <= tol; }

/* One Newton direction at (b, theta, z): returns max |gradient|; fills *db, dtheta, dz, *slope,
   unless the stopping rule holds there (no system is built or factored for a step that will not
   be taken). */
static double newton(Entity *e, double b, const double *theta, const double *z, double scale, double tol,
                     double *db, double *slope) {
    int64_t n = e->n, q = e->q;
    double *r = e->work, *s = e->work + n, *v = e->work + 2 * n, *c = e->work + 3 * n;
    double sum_r = 0.0, sum_s = 0.0, gmax;
    for (int64_t i = 0; i < n; i++) {
        double mu = expit(z[i]);
        r[i] = e->w[i] * (mu - e->y[i]);
        s[i] = e->w[i] * mu * (1.0 - mu);
        sum_r += r[i];
        sum_s += s[i];
    }
    double grad_b = sum_r + e->l0 * b;
    gmax = fabs(grad_b);
    if (e->row_space) {
        for (int64_t i = 0; i < n; i++) v[i] = r[i] + e->l2 * theta[i];
        double *fv = e->trial_theta;  /* F'v, only to measure the gradient (trial_theta is free here) */
        transpose_times(e, v, fv);
        for (int64_t j = 0; j < q; j++) if (fabs(fv[j]) > gmax) gmax = fabs(fv[j]);
        if (converged_at(gmax, scale, tol)) return gmax;
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = 0; j < n; j++) e->system[i * n + j] = s[i] * e->gram[i * n + j];
            e->system[i * n + i] += e->l2;
            e->rhs[2 * i] = v[i];
            e->rhs[2 * i + 1] = s[i];
        }
        solve_general(e, e->system, e->rhs, n, 2);
        double s_moved0 = 0.0, s_moved1 = 0.0;
        double *moved = c;  /* K X, two columns interleaved, reusing c (2n long: c and the next block) */
        for (int64_t i = 0; i < n; i++) {
            double m0 = 0.0, m1 = 0.0;
            for (int64_t j = 0; j < n; j++) { m0 += e->gram[i * n + j] * e->rhs[2 * j]; m1 += e->gram[i * n + j] * e->rhs[2 * j + 1]; }
            moved[2 * i] = m0;
            moved[2 * i + 1] = m1;
            s_moved0 += s[i] * m0;
            s_moved1 += s[i] * m1;
        }
        double schur = floor_schur(sum_s + e->l0 - s_moved1, e->total_weight);
        double delta_b = (-grad_b + s_moved0) / schur, v_dz = 0.0;
        for (int64_t i = 0; i < n; i++) {
            e->dtheta[i] = -(e->rhs[2 * i] + e->rhs[2 * i + 1] * delta_b);
            e->dz[i] = delta_b - moved[2 * i] - moved[2 * i + 1] * delta_b;
            v_dz += v[i] * (e->dz[i] - delta_b);
        }
        *db = delta_b;
        *slope = grad_b * delta_b + v_dz;
        return gmax;
    }
    double *grad = e->trial_theta;  /* scratch: the coefficients' gradient (trial_theta is free here) */
    transpose_times(e, r, grad);
    for (int64_t j = 0; j < q; j++) {
        grad[j] += e->l2 * theta[j];
        if (fabs(grad[j]) > gmax) gmax = fabs(grad[j]);
    }
    if (converged_at(gmax, scale, tol)) return gmax;
    transpose_times(e, s, c);
    if (q == 0) {
        double delta_b = -grad_b / floor_schur(sum_s + e->l0, e->total_weight);
        for (int64_t i = 0; i < n; i++) e->dz[i] = delta_b;
        *db = delta_b;
        *slope = grad_b * delta_b;
        return gmax;
    }
    primal_system(e, s);
    for (int64_t j = 0; j < q; j++) { e->rhs[2 * j] = grad[j]; e->rhs[2 * j + 1] = c[j]; }
    if (!solve_positive_definite(e, e->system, e->rhs, q, 2)) {  /* not positive definite in round-off: pivot */
        primal_system(e, s);
        for (int64_t j = 0; j < q; j++) { e->rhs[2 * j] = grad[j]; e->rhs[2 * j + 1] = c[j]; }
        solve_general(e, e->system, e->rhs, q, 2);
    }
    double c_u = 0.0, c_v = 0.0;
    for (int64_t j = 0; j < q; j++) { c_u += c[j] * e->rhs[2 * j]; c_v += c[j] * e->rhs[2 * j + 1]; }
    double schur = floor_schur(sum_s + e->l0 - c_v, e->total_weight);
    double delta_b = -(grad_b - c_u) / schur, g_d = 0.0;
    for (int64_t j = 0; j < q; j++) {
        e->dtheta[j] = -e->rhs[2 * j] - e->rhs[2 * j + 1] * delta_b;
        g_d += grad[j] * e->dtheta[j];
    }
    for (int64_t i = 0; i < n; i++) {
        double t = delta_b;
        for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) t += e->nz_val[p] * e->dtheta[e->nz_col[p]];
        e->dz[i] = t;
    }
    *db = delta_b;
    *slope = grad_b * delta_b + g_d;
    return gmax;
}

/* Backtracking Armijo search along the (capped) direction; returns 1 if a step was taken. */
static int line_search(Entity *e, double *b, double *value, double db, double slope) {
    double change = fabs(db), factor = 1.0;
    for (int64_t i = 0; i < e->n; i++)
        if (e->w[i] > 0 && fabs(e->dz[i]) > change) change = fabs(e->dz[i]);
    if (isnan(change)) factor = 0.0;
    else if (change > MAX_LOGIT_STEP) factor = MAX_LOGIT_STEP / change;
    double roundoff = 8 * EPSILON * (fabs(*value) + 1.0), step = 1.0;
    for (int halving = 0; halving < MAX_HALVINGS; halving++, step *= 0.5) {
        double t = step * factor;
        double trial_b = *b + t * db;
        for (int64_t j = 0; j < e->m; j++) e->trial_theta[j] = e->theta[j] + t * e->dtheta[j];
        for (int64_t i = 0; i < e->n; i++) e->trial_z[i] = e->z[i] + t * e->dz[i];
        double trial = objective(e, trial_b, e->trial_theta, e->trial_z);
        if (trial <= *value + ARMIJO * step * (slope * factor) + roundoff) {
            *b = trial_b;
            memcpy(e->theta, e->trial_theta, e->m * sizeof(double));
            memcpy(e->z, e->trial_z, e->n * sizeof(double));
            *value = trial;
            return 1;
        }
    }
    return 0;
}

/* Gathering: an entity's rows are scattered over the bag (they are the dataset's rows, in its
   order), so reading them is a cache miss per row and per line of its non-zeros. Read entity by
   entity inside the solve, each miss stalls the solver; so the labels, weights, offsets and
   non-zero values of a block of entities are first copied into contiguous buffers by a loop that
   does nothing else (its loads independent of each other, so the memory system serves many at
   once), then the block's entities are solved from those buffers. Blocks hold about
   BLOCK_NONZEROS non-zeros (cache-sized), at least one entity. */
#define BLOCK_NONZEROS (1 << 14)
#define BLOCK_ROWS (1 << 12)

typedef struct {
    double *y, *w, *o, *val;  /* the block's rows and non-zeros, entity by entity, row by row */
    int64_t *len;             /* each row's non-zeros */
    int64_t row_capacity, nnz_capacity;
} Block;

/* Entities first..: as many as the block holds (at least one); returns how many. */
static int64_t gather_block(Block *b, const int64_t *entities, int64_t count, const int64_t *row_start,
                            const int64_t *row_count, const int64_t *rows, const void *indptr, int ptr_bytes,
                            const double *data, const int64_t *nnz_start, const double *labels,
                            const double *weights, const double *offsets) {
    const int32_t *ptr32 = (const int32_t *)indptr;
    const int64_t *ptr64 = (const int64_t *)indptr;
    int64_t taken = 0, r = 0, v = 0;
    for (; taken < count; taken++) {
        int64_t k = entities[taken];
        if (taken > 0 && (r + row_count[k] > b->row_capacity || v + nnz_start[k + 1] - nnz_start[k] > b->nnz_capacity))
            break;
        const int64_t *own = rows + row_start[k];
        for (int64_t i = 0; i < row_count[k]; i++, r++) {
            int64_t row = own[i];
            int64_t p = ptr_bytes == 4 ? ptr32[row] : ptr64[row], end = ptr_bytes == 4 ? ptr32[row + 1] : ptr64[row + 1];
            b->y[r] = labels[row];
            b->w[r] = weights[row];
            b->o[r] = offsets[row];
            b->len[r] = end - p;
            for (; p < end; p++) b->val[v++] = data[p];
        }
    }
    return taken;
}

/* Read entity k's rows (from a block, at its row r and non-zero v) into its dense arrays (and, in
   row space, their Gram matrix FF'). */
static void load_entity(Entity *e, int64_t k, const Block *b, int64_t r, int64_t v, const int64_t *row_count,
                        const int64_t *nnz_start, const void *nnz_col, int col_bytes, const int64_t *feature_count) {
    int64_t n = row_count[k], q = feature_count[k], nz = 0;
    const uint8_t *col8 = (const uint8_t *)nnz_col + nnz_start[k];
    const uint16_t *col16 = (const uint16_t *)nnz_col + nnz_start[k];
    const uint32_t *col32 = (const uint32_t *)nnz_col + nnz_start[k];
    e->n = n;
    e->q = q;
    memset(e->f, 0, n * q * sizeof(double));
    e->total_weight = 0.0;
    for (int64_t i = 0; i < n; i++) {
        e->y[i] = b->y[r + i];
        e->w[i] = b->w[r + i];
        e->o[i] = b->o[r + i];
        e->total_weight += e->w[i];
        e->row_ptr[i] = nz;
        for (int64_t end = nz + b->len[r + i]; nz < end; nz++) {
            int64_t col = col_bytes == 1 ? col8[nz] : col_bytes == 2 ? col16[nz] : col32[nz];
            double value = b->val[v + nz];
            e->f[i * q + col] = value;
            e->nz_col[nz] = col;
            e->nz_val[nz] = value;
        }
    }
    e->row_ptr[n] = nz;
    e->row_space = n < q;
    e->m = e->row_space ? n : q;
    if (e->row_space)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j <= i; j++) {
                double t = 0.0;
                for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) t += e->nz_val[p] * e->f[j * q + e->nz_col[p]];
                e->gram[i * n + j] = t;
                e->gram[j * n + i] = t;
            }
}

/* Where the solve starts: beta0 as given (primal) or projected onto the row space. */
static void start_point(Entity *e, const double *beta0) {
    int64_t n = e->n, q = e->q;
    if (!e->row_space) { memcpy(e->theta, beta0, q * sizeof(double)); return; }
    int any = 0;
    for (int64_t j = 0; j < q; j++) any |= beta0[j] != 0.0;
    memset(e->theta, 0, n * sizeof(double));
    if (!any) return;
    double trace = 0.0;
    for (int64_t i = 0; i < n; i++) trace += e->gram[i * n + i];
    double jitter = 1e-12 * (trace / n + 1.0);
    for (int64_t i = 0; i < n; i++) {
        double t = 0.0;
        for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) t += e->nz_val[p] * beta0[e->nz_col[p]];
        e->theta[i] = t;
        for (int64_t j = 0; j < n; j++) e->system[i * n + j] = e->gram[i * n + j] + (i == j ? jitter : 0.0);
    }
    solve_general(e, e->system, e->theta, n, 1);
}

/* The entity's rows scored by its model as it is written (intercept b, coefficients beta), while
   the rows are in cache: the sums of score_rows (below), in the same column order, so the same
   scores bit for bit. */
static void score_own_rows(const Entity *e, double b, const double *beta, const int64_t *rows, double *out) {
    for (int64_t i = 0; i < e->n; i++) {
        double total = 0.0;
        for (int64_t p = e->row_ptr[i]; p < e->row_ptr[i + 1]; p++) total += e->nz_val[p] * beta[e->nz_col[p]];
        out[rows[i]] = b + total;
    }
}

/* Solve entities[0..count) of the layout; returns 0, or -1 when out of memory. Outputs per layout
   entity (intercept, iterations, converged), per (entity, local feature) pair (coefficients) and,
   unless out_scores is NULL, per dataset row of these entities (its score by the result). */
int solve_entities(int64_t count, const int64_t *entities, const int64_t *row_start, const int64_t *row_count,
                   const int64_t *rows, const void *indptr, int ptr_bytes, const double *data,
                   const int64_t *nnz_start, const void *nnz_col, int col_bytes, const int64_t *pair_start, const int64_t *feature_count,
                   const double *labels, const double *weights, const double *offsets, double l2,
                   const double *intercept_ridge, const double *start_intercept, const double *start_pair,
                   int64_t max_iter, double tol, double *out_intercept, double *out_pair, int64_t *out_iterations,
                   uint8_t *out_converged, double *out_scores) {
    int64_t most_n = 1, most_q = 1, most_nnz = 1;
    for (int64_t e = 0; e < count; e++) {
        int64_t k = entities[e];
        if (row_count[k] > most_n) most_n = row_count[k];
        if (feature_count[k] > most_q) most_q = feature_count[k];
        if (nnz_start[k + 1] - nnz_start[k] > most_nnz) most_nnz = nnz_start[k + 1] - nnz_start[k];
    }
    int64_t side = most_n > most_q ? most_n : most_q;
    int64_t sizes[] = {most_n * most_q, most_n * most_n, most_n, most_n, most_n, side * side, 2 * side,
                       side, most_n, side, most_n, side, most_n, 6 * side, most_nnz};
    int64_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) total += sizes[i];
    double *arena = malloc((total + 2 * side) * sizeof(double));
    int64_t *index_arena = malloc((most_nnz + most_n + 1) * sizeof(int64_t));
    int *pivots = malloc(side * sizeof(int));
    Block block;
    block.row_capacity = most_n > BLOCK_ROWS ? most_n : BLOCK_ROWS;
    block.nnz_capacity = most_nnz > BLOCK_NONZEROS ? most_nnz : BLOCK_NONZEROS;
    double *block_arena = malloc((3 * block.row_capacity + block.nnz_capacity) * sizeof(double));
    block.len = malloc(block.row_capacity * sizeof(int64_t));
    if (arena == NULL || index_arena == NULL || pivots == NULL || block_arena == NULL || block.len == NULL) {
        free(arena);
        free(index_arena);
        free(pivots);
        free(block_arena);
        free(block.len);
        return -1;
    }
    block.y = block_arena;
    block.w = block.y + block.row_capacity;
    block.o = block.w + block.row_capacity;
    block.val = block.o + block.row_capacity;
    Entity ent;
    ent.lapack_scratch = arena + total;
    ent.pivots = pivots;
    ent.nz_col = index_arena;
    ent.row_ptr = index_arena + most_nnz;
    double **slots[] = {&ent.f, &ent.gram, &ent.y, &ent.w, &ent.o, &ent.system, &ent.rhs, &ent.theta, &ent.z,
                        &ent.dtheta, &ent.dz, &ent.trial_theta, &ent.trial_z, &ent.work, &ent.nz_val};
    double *next = arena;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) { *slots[i] = next; next += sizes[i]; }
    ent.l2 = l2;
    int64_t block_end = 0, r = 0, v = 0;
    for (int64_t e = 0; e < count; e++) {
        int64_t k = entities[e];
        if (e == block_end) {
            block_end = e + gather_block(&block, entities + e, count - e, row_start, row_count, rows, indptr,
                                         ptr_bytes, data, nnz_start, labels, weights, offsets);
            r = v = 0;
        }
        load_entity(&ent, k, &block, r, v, row_count, nnz_start, nnz_col, col_bytes, feature_count);
        r += row_count[k];
        v += nnz_start[k + 1] - nnz_start[k];
        ent.l0 = intercept_ridge[k];
        start_point(&ent, start_pair + pair_start[k]);
        double b = start_intercept[k], scale = ent.total_weight > 1.0 ? ent.total_weight : 1.0;
        predictor(&ent, b, ent.theta, ent.z);
        double value = objective(&ent, b, ent.theta, ent.z);
        int64_t iterations = 0;
        uint8_t converged = 0;
        for (int64_t step = 0; step <= max_iter; step++) {
            double db, slope;
            double gmax = newton(&ent, b, ent.theta, ent.z, scale, tol, &db, &slope);
            if (converged_at(gmax, scale, tol)) { converged = 1; break; }
            if (step >= max_iter || !line_search(&ent, &b, &value, db, slope)) break;
            iterations++;
        }
        out_intercept[k] = b;
        out_iterations[k] = iterations;
        out_converged[k] = converged;
        double *beta = out_pair + pair_start[k];
        if (ent.row_space) {
            transpose_times(&ent, ent.theta, beta);
        } else {
            memcpy(beta, ent.theta, ent.q * sizeof(double));
        }
        if (out_scores != NULL) score_own_rows(&ent, b, beta, rows + row_start[k], out_scores);
    }
    free(arena);
    free(index_arena);
    free(pivots);
    free(block_arena);
    free(block.len);
    return 0;
}

/* Scores of rows by per-entity models: out[i] = intercepts[e] + x_i . coef_e with e = model_row[i]
   (0 where e < 0). Both matrices are CSR with sorted column indices of one integer type; each
   row's dot product is a merge of its entries with its model's, summed in column order. */
#define SCORE_ROWS(NAME, INDEX)                                                                          \
    void NAME(int64_t first, int64_t last, const int64_t *model_row, const int64_t *x_indptr,              \
              const INDEX *x_indices, const double *x_data, const int64_t *c_indptr, const INDEX *c_indices, \
              const double *c_data, const double *intercepts, double *out) {                             \
        for (int64_t i = first; i < last; i++) {                                                         \
            int64_t e = model_row[i];                                                                    \
            if (e < 0) { out[i] = 0.0; continue; }                                                       \
            int64_t p = x_indptr[i], p_end = x_indptr[i + 1], c = c_indptr[e], c_end = c_indptr[e + 1]; \
            double total = 0.0;                                                                          \
            while (p < p_end && c < c_end) {                                                             \
                if (x_indices[p] < c_indices[c]) p++;                                                    \
                else if (x_indices[p] > c_indices[c]) c++;                                               \
                else { total += x_data[p] * c_data[c]; p++; c++; }                                       \
            }                                                                                            \
            out[i] = intercepts[e] + total;                                                              \
        }                                                                                                \
    }

SCORE_ROWS(score_rows_int32, int32_t)
SCORE_ROWS(score_rows_int64, int64_t)

/* Grouping rows by entity: the positions of rows[0..n) ordered by codes[rows[i]] (codes in
   0..num_codes), stable, by one counting pass (what a stable argsort of the codes gives, in
   linear time). counts: num_codes + 1 zeroed int64 of workspace. */
void group_by_code(int64_t n, const int64_t *rows, const int64_t *codes, int64_t num_codes, int64_t *counts,
                   int64_t *out) {
    for (int64_t i = 0; i < n; i++) counts[codes[rows[i]] + 1]++;
    for (int64_t c = 0; c < num_codes; c++) counts[c + 1] += counts[c];
    for (int64_t i = 0; i < n; i++) out[counts[codes[rows[i]]]++] = rows[i];
}

static void sort_columns(int64_t *a, int64_t n);

/* The local feature subspaces of entities first..last-1 of a layout (rows of entity k are
   rows[row_start[k] .. + row_count[k]] of the CSR indptr/indices): feature_count[k - first] =
   its distinct columns, pairs (from pairs[0]) = those columns sorted, entity by entity, and
   local (from local[0]) = each non-zero's rank among its entity's columns, entity by entity, row
   by row (most: the most non-zeros of one entity). The next entities' rows are prefetched while one
   is ranked (the rows are scattered over the bag).
   With `mark` (one int per column of the bag's `width`, every one -1 on entry and on return),
   columns are marked as they are seen (and read back in column order when that is cheaper than
   sorting them); without it (a bag too wide for such a table), each
   entity's columns are sorted and searched.
   Returns the number of pairs written, or -1 when out of memory. */
#define PREFETCH_AHEAD 2  /* entities ahead whose row pointers are requested (their non-zeros: one ahead) */
#define PREFETCH_ROWS 16  /* at most this many rows of an entity */
#define RANK_COLUMNS(NAME, INDEX)                                                                        \
    static void NAME##_prefetch(int64_t k, const int64_t *row_start, const int64_t *row_count,           \
                                const int64_t *rows, const INDEX *indptr, const INDEX *indices,          \
                                int pointers) {                                                          \
        int64_t count = row_count[k] < PREFETCH_ROWS ? row_count[k] : PREFETCH_ROWS;                     \
        for (int64_t i = 0; i < count; i++) {                                                            \
            int64_t row = rows[row_start[k] + i];                                                        \
            if (pointers) { __builtin_prefetch(indptr + row); continue; }                                \
            __builtin_prefetch(indices + indptr[row]);                                                   \
            __builtin_prefetch(indices + indptr[row + 1] - 1);                                           \
        }                                                                                                \
    }                                                                                                    \
    int64_t NAME(int64_t first, int64_t last, const int64_t *row_start, const int64_t *row_count,        \
                 const int64_t *rows, const INDEX *indptr, const INDEX *indices, int64_t most,           \
                 int64_t width, int32_t *mark, int64_t *feature_count, int64_t *pairs, uint32_t *local) {               \
        int64_t written = 0, nz = 0;                                                                     \
        int64_t *seen = mark == NULL ? malloc((most > 0 ? most : 1) * sizeof(int64_t)) : NULL;           \
        if (mark == NULL && seen == NULL) return -1;                                                     \
        for (int64_t k = first; k < last; k++) {                                                         \
            if (k + PREFETCH_AHEAD < last)                                                               \
                NAME##_prefetch(k + PREFETCH_AHEAD, row_start, row_count, rows, indptr, indices, 1);    \
            if (k + 1 < last) NAME##_prefetch(k + 1, row_start, row_count, rows, indptr, indices, 0);    \
            int64_t distinct = 0, *out = pairs + written;                                                \
            for (int64_t i = 0; i < row_count[k]; i++) {                                                 \
                int64_t row = rows[row_start[k] + i];                                                    \
                for (int64_t p = indptr[row]; p < indptr[row + 1]; p++) {                                \
                    int64_t col = indices[p];                                                            \
                    if (mark == NULL) { seen[distinct++] = col; continue; }                              \
                    if (mark[col] < 0) { mark[col] = 0; out[distinct++] = col; }                         \
                }                                                                                        \
            }                                                                                            \
            if (mark == NULL) { /* sort every occurrence, keep the distinct ones */                      \
                sort_columns(seen, distinct);                                                            \
                int64_t kept = 0;                                                                        \
                for (int64_t j = 0; j < distinct; j++)                                                   \
                    if (j == 0 || seen[j] != seen[j - 1]) out[kept++] = seen[j];                         \
                distinct = kept;                                                                         \
            } else if (distinct > 32 && width <= 16 * distinct) { /* read the marks in column order */   \
                distinct = 0;                                                                            \
                for (int64_t col = 0; col < width; col++)                                                \
                    if (mark[col] >= 0) { mark[col] = (int32_t)distinct; out[distinct++] = col; }        \
            } else {                                                                                     \
                sort_columns(out, distinct);                                                             \
                for (int64_t j = 0; j < distinct; j++) mark[out[j]] = (int32_t)j;                        \
            }                                                                                            \
            for (int64_t i = 0; i < row_count[k]; i++) {                                                 \
                int64_t row = rows[row_start[k] + i];                                                    \
                for (int64_t p = indptr[row]; p < indptr[row + 1]; p++, nz++) {                          \
                    int64_t col = indices[p];                                                            \
                    if (mark != NULL) { local[nz] = (uint32_t)mark[col]; continue; }                     \
                    int64_t lo = 0, hi = distinct - 1;                                                   \
                    while (lo < hi) {                                                                    \
                        int64_t mid = (lo + hi) / 2;                                                     \
                        if (out[mid] < col) lo = mid + 1; else hi = mid;                                 \
                    }                                                                                    \
                    local[nz] = (uint32_t)lo;                                                            \
                }                                                                                        \
            }                                                                                            \
            if (mark != NULL)                                                                            \
                for (int64_t j = 0; j < distinct; j++) mark[out[j]] = -1;                                \
            feature_count[k - first] = distinct;                                                         \
            written += distinct;                                                                         \
        }                                                                                                \
        free(seen);                                                                                      \
        return written;                                                                                  \
    }

RANK_COLUMNS(rank_columns_int32, int32_t)
RANK_COLUMNS(rank_columns_int64, int64_t)

static int compare_columns(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Ascending; insertion sort for the few columns of a tiny entity. */
static void sort_columns(int64_t *a, int64_t n) {
    if (n > 32) { qsort(a, n, sizeof(int64_t), compare_columns); return; }
    for (int64_t i = 1; i < n; i++) {
        int64_t v = a[i], j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}
