// The JDBC client of the compatibility suite (tests/compat/jdbc.rs).
//
// Run with Java's single-file source launcher and Debian's PostgreSQL JDBC
// driver, no build step:
//
//   java -cp /usr/share/java/postgresql.jar tests/clients/jdbc/Compat.java read write
//
// Where to connect comes from the libpq variables (PGHOST, PGPORT, PGUSER,
// PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT), so the same program
// runs directly against PostgreSQL and through pgward. Each argument names a
// section, run in order, each on a connection of its own. The output is a
// canonical transcript: tab-separated lines, nothing that legitimately
// differs between a direct and a proxied connection (backend pid, TLS,
// application name, timings), so the test can compare transcripts whole.
//
// Sections:
//   read     settings, DatabaseMetaData (getTables, getColumns,
//            getPrimaryKeys), prepared statements run past prepareThreshold
//            (server-side prepares, binary transfer), the clinic tables, the
//            `kinds` table of special types, and a 1,000,000-row result read
//            with a fetch size (portal suspension) with a count and checksum
//   write    batch inserts (plain and reWriteBatchedInserts) into jdbc_batch,
//            a failing batch rolled back, ordinary errors (unrestricted only)
//   refused  statements a read-only, masked role may not run (writes, DDL,
//            an unlisted view, an unlisted function): each must be an
//            SQLException with SQLState 42501 and the connection must go on,
//            in autocommit, past prepareThreshold, in a batch and in a
//            transaction; also the role's application_name, which the
//            driver tried to SET while connecting

import java.math.BigDecimal;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.sql.Array;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.zip.CRC32;

import org.postgresql.PGStatement;

public class Compat {
    static final PrintStream OUT = new PrintStream(System.out, false, StandardCharsets.UTF_8);

    /** The objects the transcript describes (other clients' tables may come and go). */
    static final Set<String> KNOWN =
            Set.of("clinics", "patients", "visits", "kinds", "clinic_counts", "jdbc_batch");

    /** How many times each prepared statement runs: well past prepareThreshold. */
    static final int RUNS = 10;

    /** The driver's default, set explicitly so the transcript can say it was passed. */
    static final int PREPARE_THRESHOLD = 5;

    public static void main(String[] args) throws Exception {
        try {
            for (String section : args) {
                OUT.println("== " + section);
                switch (section) {
                    case "read" -> read();
                    case "write" -> write();
                    case "refused" -> refused();
                    default -> throw new IllegalArgumentException("unknown section " + section);
                }
            }
            OUT.println("== done");
        } finally {
            OUT.flush();
        }
    }

    static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    static Connection connect(Properties extra) throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432")
                + "/" + env("PGDATABASE", "postgres");
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "postgres"));
        p.setProperty("password", env("PGPASSWORD", ""));
        p.setProperty("sslmode", env("PGSSLMODE", "disable"));
        String root = System.getenv("PGSSLROOTCERT");
        if (root != null && !root.isEmpty()) {
            p.setProperty("sslrootcert", root);
        }
        p.setProperty("prepareThreshold", Integer.toString(PREPARE_THRESHOLD));
        p.putAll(extra);
        return DriverManager.getConnection(url, p);
    }

    static Connection connect() throws SQLException {
        return connect(new Properties());
    }

    static void out(Object... parts) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < parts.length; i++) {
            if (i > 0) {
                sb.append('\t');
            }
            sb.append(String.valueOf(parts[i]).replace("\n", " | "));
        }
        OUT.println(sb);
    }

    /** An error as the transcript shows it: SQLState and the driver's message. */
    static void error(String what, SQLException e) {
        out(what, "error", e.getSQLState(), e.getClass().getSimpleName(), e.getMessage());
        SQLException next = e.getNextException();
        if (next != null && next != e) {
            out(what, "next", next.getSQLState(), next.getMessage());
        }
    }

    /** Every row of a result, each column through getString. */
    static int rows(String tag, ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        int count = 0;
        while (rs.next()) {
            Object[] parts = new Object[n + 1];
            parts[0] = tag;
            for (int i = 1; i <= n; i++) {
                parts[i] = rs.getString(i);
            }
            out(parts);
            count++;
        }
        return count;
    }

    static void query(Connection c, String tag, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            out(tag, "rows", rows(tag, rs));
        }
    }

    static void columns(String tag, ResultSetMetaData md) throws SQLException {
        for (int i = 1; i <= md.getColumnCount(); i++) {
            out(tag, "column", md.getColumnLabel(i), md.getColumnTypeName(i), md.getColumnType(i),
                    md.getColumnClassName(i));
        }
    }

    // ---------------------------------------------------------------- read

    interface Step {
        void run() throws SQLException;
    }

    /**
     * Runs one step of a section; an SQLException is printed (the test
     * asserts there is none) and the next step goes on.
     */
    static void step(Connection c, String name, Step step) throws SQLException {
        try {
            step.run();
        } catch (SQLException e) {
            error(name, e);
            if (!c.getAutoCommit()) {
                c.rollback();
                c.setAutoCommit(true);
            }
        }
    }

    static void read() throws SQLException {
        try (Connection c = connect()) {
            step(c, "settings", () -> settings(c));
            metadata(c);
            step(c, "prepared", () -> preparedPatients(c));
            step(c, "kinds", () -> preparedKinds(c));
            step(c, "server_prepared", () -> serverPrepares(c));
            step(c, "fetch", () -> fetchPatients(c));
            step(c, "visits", () -> query(c, "visits", "SELECT id, patient_id, clinic_id, visited_at,"
                    + " reason FROM visits WHERE id <= 30 ORDER BY id"));
            step(c, "counts", () -> query(c, "counts",
                    "SELECT clinic_id, count(*) FROM patients GROUP BY clinic_id ORDER BY 1"));
            step(c, "million", () -> million(c));
        }
    }

    static void settings(Connection c) throws SQLException {
        DatabaseMetaData md = c.getMetaData();
        out("product", md.getDatabaseProductName(), md.getDatabaseMajorVersion());
        out("driver", md.getDriverName(), md.getJDBCMajorVersion());
        out("autocommit", c.getAutoCommit(), "readonly", c.isReadOnly(), "valid", c.isValid(5));
        out("isolation", c.getTransactionIsolation());
        query(c, "session", "SELECT current_user, current_database(),"
                + " current_setting('client_encoding'), current_setting('DateStyle'),"
                + " current_setting('TimeZone'), current_setting('integer_datetimes'),"
                + " current_setting('standard_conforming_strings'), current_setting('extra_float_digits')");
    }

    static void metadata(Connection c) throws SQLException {
        DatabaseMetaData md = c.getMetaData();
        step(c, "getTables", () -> {
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) {
                    String name = rs.getString("TABLE_NAME");
                    if (KNOWN.contains(name)) {
                        out("table", rs.getString("TABLE_SCHEM"), name, rs.getString("TABLE_TYPE"));
                    }
                }
            }
        });
        for (String table : List.of("clinics", "patients", "visits", "kinds", "clinic_counts")) {
            step(c, "getColumns " + table, () -> {
                try (ResultSet rs = md.getColumns(null, "public", table, "%")) {
                    while (rs.next()) {
                        out("column", table, rs.getInt("ORDINAL_POSITION"), rs.getString("COLUMN_NAME"),
                                rs.getString("TYPE_NAME"), rs.getInt("DATA_TYPE"), rs.getInt("COLUMN_SIZE"),
                                rs.getInt("DECIMAL_DIGITS"), rs.getString("IS_NULLABLE"),
                                rs.getString("COLUMN_DEF"), rs.getString("IS_AUTOINCREMENT"));
                    }
                }
            });
            step(c, "getPrimaryKeys " + table, () -> {
                try (ResultSet rs = md.getPrimaryKeys(null, "public", table)) {
                    while (rs.next()) {
                        out("pkey", table, rs.getString("COLUMN_NAME"), rs.getInt("KEY_SEQ"),
                                rs.getString("PK_NAME"));
                    }
                }
            });
        }
        step(c, "getImportedKeys", () -> {
            try (ResultSet rs = md.getImportedKeys(null, "public", "visits")) {
                while (rs.next()) {
                    out("fkey", "visits", rs.getString("FKCOLUMN_NAME"), rs.getString("PKTABLE_NAME"),
                            rs.getString("PKCOLUMN_NAME"), rs.getString("FK_NAME"));
                }
            }
        });
        step(c, "getIndexInfo", () -> {
            try (ResultSet rs = md.getIndexInfo(null, "public", "patients", false, false)) {
                while (rs.next()) {
                    out("index", "patients", rs.getString("INDEX_NAME"), rs.getBoolean("NON_UNIQUE"),
                            rs.getInt("ORDINAL_POSITION"), rs.getString("COLUMN_NAME"));
                }
            }
        });
    }

    /** One PreparedStatement, RUNS times with new parameters: server-side prepared from the 5th. */
    static void preparedPatients(Connection c) throws SQLException {
        String sql = "SELECT id, clinic_id, name, ssn, email, dob, phone FROM patients"
                + " WHERE id BETWEEN ? AND ? ORDER BY id";
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            PGStatement pg = ps.unwrap(PGStatement.class);
            out("prepared", "threshold", pg.getPrepareThreshold());
            for (int run = 1; run <= RUNS; run++) {
                ps.setInt(1, run * 3 - 2);
                ps.setInt(2, run * 3);
                try (ResultSet rs = ps.executeQuery()) {
                    if (run == 1) {
                        columns("prepared", rs.getMetaData());
                    }
                    int n = rows("patient", rs);
                    out("prepared", "run", run, "rows", n, "server_prepare", pg.isUseServerPrepare());
                }
            }
        }
    }

    /** Typed parameters and special result types, first as text, then binary once server-prepared. */
    static void preparedKinds(Connection c) throws SQLException {
        String sql = "SELECT id, m, a, tags, data, amount, at, day, raw, uid, ratio, big, flag FROM kinds"
                + " WHERE id BETWEEN ? AND ? AND amount >= ? AND flag IN (?, NOT ?) ORDER BY id";
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int run = 1; run <= RUNS; run++) {
                ps.setInt(1, run);
                ps.setLong(2, run + 2L);
                ps.setBigDecimal(3, new BigDecimal("0.00"));
                ps.setBoolean(4, true);
                ps.setBoolean(5, true);
                try (ResultSet rs = ps.executeQuery()) {
                    if (run == 1) {
                        columns("kinds", rs.getMetaData());
                    }
                    int n = 0;
                    while (rs.next()) {
                        Array tags = rs.getArray("tags");
                        out("kind", run, rs.getInt("id"), rs.getString("m"), rs.getString("a"),
                                Arrays.toString((Object[]) tags.getArray()), rs.getString("data"),
                                rs.getBigDecimal("amount"), rs.getString("at"), rs.getTimestamp("at").toInstant(),
                                rs.getDate("day"), HexFormat.of().formatHex(rs.getBytes("raw")),
                                rs.getObject("uid"), rs.getDouble("ratio"), rs.getLong("big"),
                                rs.getBoolean("flag"),
                                rs.getObject("uid").getClass().getSimpleName(),
                                rs.getObject("m").getClass().getSimpleName());
                        n++;
                    }
                    out("kinds", "run", run, "rows", n);
                }
            }
        }
    }

    /** The server's own word that the driver prepared statements by name. */
    static void serverPrepares(Connection c) throws SQLException {
        query(c, "server_prepared", "SELECT count(*) FILTER (WHERE statement LIKE '%FROM patients%'),"
                + " count(*) FILTER (WHERE statement LIKE '%FROM kinds%'),"
                + " bool_and(NOT from_sql) FROM pg_prepared_statements");
    }

    /** A whole table read 100 rows at a time through a named portal. */
    static void fetchPatients(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (Statement st = c.createStatement()) {
            st.setFetchSize(100);
            try (ResultSet rs = st.executeQuery(
                    "SELECT id, clinic_id, name, ssn, email, dob, phone FROM patients ORDER BY id")) {
                out("fetch", "fetch_size", rs.getFetchSize());
                out("fetch", "rows", rows("row", rs));
            }
        }
        c.commit();
        c.setAutoCommit(true);
    }

    /** 1,000,000 rows with a fetch size: count, sum, CRC-32 of "g:text\n", in-order check. */
    static void million(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT g, 'row-' || g FROM generate_series(1, ?) AS g")) {
            ps.setInt(1, 1_000_000);
            ps.setFetchSize(10_000);
            long count = 0;
            long sum = 0;
            long wrong = 0;
            CRC32 crc = new CRC32();
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    int g = rs.getInt(1);
                    String text = rs.getString(2);
                    count++;
                    sum += g;
                    if (g != count || !text.equals("row-" + g)) {
                        wrong++;
                    }
                    crc.update((g + ":" + text + "\n").getBytes(StandardCharsets.UTF_8));
                }
            }
            out("million", "count", count, "sum", sum, "out_of_order", wrong, "crc32",
                    Long.toHexString(crc.getValue()));
        }
        c.commit();
        c.setAutoCommit(true);
    }

    // --------------------------------------------------------------- write

    static final String INSERT = "INSERT INTO jdbc_batch (id, label, amount) VALUES (?, ?, ?)";

    static void write() throws SQLException {
        try (Connection c = connect()) {
            try (Statement st = c.createStatement()) {
                out("truncate", st.executeUpdate("TRUNCATE jdbc_batch"));
            }
            c.setAutoCommit(false);
            batch(c, "plain", 1, 1000, 250);
            c.commit();
            // A failing batch: the duplicate key aborts it, the rollback undoes it.
            try (PreparedStatement ps = c.prepareStatement(INSERT)) {
                for (int id : new int[] {2001, 2002, 5, 2003}) {
                    ps.setInt(1, id);
                    ps.setString(2, "dup " + id);
                    ps.setBigDecimal(3, BigDecimal.ONE);
                    ps.addBatch();
                }
                ps.executeBatch();
                out("duplicate", "no error");
            } catch (BatchUpdateException e) {
                error("duplicate", e);
                out("duplicate", "counts", Arrays.toString(e.getUpdateCounts()));
                c.rollback();
            }
            c.setAutoCommit(true);
            check(c);
        }
        Properties rewrite = new Properties();
        rewrite.setProperty("reWriteBatchedInserts", "true");
        try (Connection c = connect(rewrite)) {
            c.setAutoCommit(false);
            batch(c, "rewritten", 1001, 2000, 300);
            c.commit();
            c.setAutoCommit(true);
            check(c);
            try (Statement st = c.createStatement()) {
                st.addBatch("UPDATE jdbc_batch SET amount = amount + 1 WHERE id <= 10");
                st.addBatch("DELETE FROM jdbc_batch WHERE id > 1990");
                st.addBatch("INSERT INTO jdbc_batch (id, label) VALUES (5000, 'statement batch')");
                out("statement_batch", "counts", Arrays.toString(st.executeBatch()));
            }
            check(c);
            // An ordinary error from the database itself, and the connection goes on.
            try (Statement st = c.createStatement()) {
                st.executeQuery("SELECT 1 / (id - id) FROM jdbc_batch");
                out("division", "no error");
            } catch (SQLException e) {
                error("division", e);
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT id / ? FROM jdbc_batch WHERE id = 7")) {
                for (int run = 1; run <= RUNS; run++) {
                    ps.setInt(1, run % 3);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out("divide", run, rs.getInt(1));
                    } catch (SQLException e) {
                        error("divide " + run, e);
                    }
                }
            }
            query(c, "after_errors", "SELECT count(*) FROM jdbc_batch");
        }
    }

    static void batch(Connection c, String tag, int from, int to, int chunk) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(INSERT)) {
            long total = 0;
            List<Integer> sizes = new ArrayList<>();
            for (int id = from; id <= to; id++) {
                ps.setInt(1, id);
                ps.setString(2, "label " + id + (id % 7 == 0 ? " ünïcødé ✓" : ""));
                ps.setBigDecimal(3, new BigDecimal(id).movePointLeft(2));
                ps.addBatch();
                if ((id - from + 1) % chunk == 0 || id == to) {
                    int[] counts = ps.executeBatch();
                    sizes.add(counts.length);
                    for (int n : counts) {
                        total += n;
                    }
                }
            }
            out(tag, "batches", sizes, "sum_of_counts", total);
        }
    }

    static void check(Connection c) throws SQLException {
        query(c, "table", "SELECT count(*), sum(id), sum(amount), md5(string_agg(label, ',' ORDER BY id))"
                + " FROM jdbc_batch");
    }

    // ------------------------------------------------------------- refused

    static void refused() throws SQLException {
        try (Connection c = connect()) {
            // The driver ran SET application_name while connecting; pgward keeps its tag.
            query(c, "application_name", "SHOW application_name");
            alive(c, "start");
            refuse(c, "update", "UPDATE patients SET name = 'x' WHERE id = 3");
            alive(c, "after update");
            refuse(c, "delete", "DELETE FROM visits");
            refuse(c, "create", "CREATE TABLE jdbc_nope (x int)");
            refuse(c, "unlisted_view", "SELECT * FROM clinic_counts");
            refuse(c, "function", "SELECT pg_read_file('/etc/hostname')");
            // A denied column does not exist for the role: the database's own 42703.
            refuse(c, "denied_column", "SELECT notes FROM visits");
            alive(c, "after refusals");

            // A working statement, server-prepared...
            PreparedStatement good = c.prepareStatement("SELECT id, ssn FROM patients WHERE id = ?");
            PGStatement goodPg = good.unwrap(PGStatement.class);
            for (int run = 1; run <= RUNS; run++) {
                good.setInt(1, run * 3);
                try (ResultSet rs = good.executeQuery()) {
                    rs.next();
                    out("good", run, rs.getInt(1), rs.getString(2), "server_prepare",
                            goodPg.isUseServerPrepare());
                }
            }
            // ...a refused read, run past the threshold (so from the fifth run
            // on the driver sends it as a named server-side statement)...
            try (PreparedStatement bad = c.prepareStatement(
                    "SELECT clinic, patients FROM clinic_counts WHERE patients > ?")) {
                PGStatement badPg = bad.unwrap(PGStatement.class);
                for (int run = 1; run <= RUNS; run++) {
                    bad.setInt(1, run);
                    try (ResultSet rs = bad.executeQuery()) {
                        out("bad_read " + run, "no error");
                    } catch (SQLException e) {
                        error("bad_read " + run, e);
                    }
                    out("bad_read " + run, "server_prepare", badPg.isUseServerPrepare());
                }
            }
            // ...a refused write, also prepared...
            try (PreparedStatement bad = c.prepareStatement("UPDATE patients SET ssn = ? WHERE id = ?")) {
                for (int run = 1; run <= RUNS; run++) {
                    bad.setString(1, "000-00-0000");
                    bad.setInt(2, run * 3);
                    try {
                        out("bad_update " + run, "updated", bad.executeUpdate());
                    } catch (SQLException e) {
                        error("bad_update " + run, e);
                    }
                }
            }
            // ...and the first one still works, by its server-side name.
            for (int run = 1; run <= 3; run++) {
                good.setInt(1, 300 + run * 3);
                try (ResultSet rs = good.executeQuery()) {
                    rs.next();
                    out("good_again", run, rs.getInt(1), rs.getString(2));
                }
            }
            good.close();
            alive(c, "after prepared");

            // A refused batch.
            try (PreparedStatement ps = c.prepareStatement("UPDATE patients SET email = ? WHERE id = ?")) {
                for (int id = 3; id <= 9; id += 3) {
                    ps.setString(1, "x@example.org");
                    ps.setInt(2, id);
                    ps.addBatch();
                }
                out("batch", "counts", Arrays.toString(ps.executeBatch()));
            } catch (SQLException e) {
                error("batch", e);
            }
            alive(c, "after batch");

            // In a transaction: the refusal aborts it, as any error would.
            c.setAutoCommit(false);
            query(c, "tx_before", "SELECT count(*) FROM patients");
            refuse(c, "tx_refused", "SELECT * FROM clinic_counts");
            try {
                query(c, "tx_after_error", "SELECT 1");
            } catch (SQLException e) {
                error("tx_after_error", e);
            }
            c.rollback();
            query(c, "tx_after_rollback", "SELECT count(*) FROM patients");
            c.commit();
            c.setAutoCommit(true);
            alive(c, "end");
        }
    }

    static void refuse(Connection c, String tag, String sql) {
        try (Statement st = c.createStatement()) {
            boolean rows = st.execute(sql);
            out(tag, "no error", rows ? "rows" : "count " + st.getUpdateCount());
        } catch (SQLException e) {
            error(tag, e);
        }
    }

    static void alive(Connection c, String tag) throws SQLException {
        try (Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*), min(ssn) FROM patients")) {
            rs.next();
            out("alive", tag, rs.getLong(1), rs.getString(2), "valid", c.isValid(5));
        }
    }
}
