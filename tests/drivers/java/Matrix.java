// The pgveil driver-matrix scenario for the PostgreSQL JDBC driver (run by
// tests/drivers.rs, which compiles it against /usr/share/java/postgresql.jar).
//
//     java -cp DIR:/usr/share/java/postgresql.jar Matrix TAG NN PORT
//
// TAG and NN make the values unique to this run (see `Scenario` in
// tests/drivers.rs); PORT is pgveil's. Prints one JSON object per step and
// exits 1 on the first mismatch.

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

import org.postgresql.PGStatement;

public class Matrix {
    static String tag;
    static int nn;
    static int port;
    static String step = "start";
    static final int PREPARED_RUNS = 12;
    static final String REFUSED_WRITE = "INSERT INTO users (email) SELECT plan FROM users"; // 0A000
    static final String INS_USER = "INSERT INTO users (email, name) VALUES (?, ?)";
    static final String INS_MEMBER =
        "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES (?, ?, ?, ?)";
    static final String LOOKUP = "SELECT name FROM users WHERE email = ?";

    static String email(String who) { return tag + "-" + who + "@example.com"; }
    static String name(String what) { return tag + " " + what; }
    static String ssn(String mid) { return String.format("9%02d-%s", nn, mid); }

    static Connection connect(String role) throws SQLException {
        return connect(role, "");
    }

    static Connection connect(String role, String options) throws SQLException {
        return DriverManager.getConnection(
            "jdbc:postgresql://127.0.0.1:" + port + "/app?user=" + role + "&sslmode=disable" + options);
    }

    static void ok(String extra) {
        System.out.println("{\"driver\": \"jdbc\", \"step\": \"" + step + "\", \"ok\": true" + extra + "}");
        System.out.flush();
    }

    static void expect(Object got, Object want, String what) {
        if (!Objects.deepEquals(got, want)) {
            throw new AssertionError(what + ": got " + show(got) + ", want " + show(want));
        }
    }

    static String show(Object o) {
        if (o instanceof Object[]) return Arrays.deepToString((Object[]) o);
        if (o instanceof int[]) return Arrays.toString((int[]) o);
        return String.valueOf(o);
    }

    static boolean isEnvelope(byte[] b) { return b != null && b.length > 2 && b[0] == 'p' && b[1] == 'v'; }

    /** No name (tag and a space) or email of this run in a stored value. */
    static boolean plaintextFree(String s) {
        String t = s.toLowerCase();
        return !t.contains((tag + " ").toLowerCase()) && !t.contains("@example.com");
    }

    /** Every row of a query with parameters, as lists of getObject values. */
    static List<List<Object>> rows(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            return collect(ps.executeQuery());
        }
    }

    static List<List<Object>> collect(ResultSet rs) throws SQLException {
        List<List<Object>> out = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<Object> row = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                Object v = rs.getObject(i);
                if (v instanceof java.sql.Date) v = ((java.sql.Date) v).toLocalDate();
                row.add(v);
            }
            out.add(row);
        }
        rs.close();
        return out;
    }

    static List<List<Object>> list(Object[]... rows) {
        List<List<Object>> out = new ArrayList<>();
        for (Object[] r : rows) out.add(Arrays.asList(r));
        return out;
    }

    static Object[] row(Object... v) { return v; }

    static int update(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            return ps.executeUpdate();
        }
    }

    static void insertMember(Connection c, String legal, LocalDate dob, String ssn, int risk) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(INS_MEMBER)) {
            ps.setString(1, legal);
            ps.setObject(2, dob);
            ps.setString(3, ssn);
            ps.setInt(4, risk);
            expect(ps.executeUpdate(), 1, "insert member");
        }
    }

    public static void main(String[] args) {
        tag = args[0];
        nn = Integer.parseInt(args[1]);
        port = Integer.parseInt(args[2]);
        String mode = args.length > 3 ? args[3] : "matrix";
        try {
            if (mode.equals("batch-default")) {
                batchDefault();
            } else {
                run();
            }
        } catch (Throwable e) {
            String msg = (e.getClass().getSimpleName() + ": " + e.getMessage()).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", " ");
            System.out.println("{\"driver\": \"jdbc\", \"step\": \"" + step + "\", \"ok\": false, \"error\": \"" + msg + "\"}");
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("{\"driver\": \"jdbc\", \"step\": \"done\", \"ok\": true}");
    }

    /**
     * A PreparedStatement batch with pgjdbc's defaults (setString declares
     * varchar) into protected columns, then the rows read back.
     */
    static void batchDefault() throws Exception {
        step = "batch_default";
        try (Connection app = connect("calmony_app");
             PreparedStatement ps = app.prepareStatement(INS_USER)) {
            for (String who : new String[] {"batch1", "batch2"}) {
                ps.setString(1, email(who));
                ps.setString(2, name("Batch " + who));
                ps.addBatch();
            }
            expect(ps.executeBatch(), new int[] {1, 1}, "batch");
            expect(rows(app, LOOKUP, email("batch2")), list(row(name("Batch batch2"))), "read back");
        }
        ok("");
    }

    static void run() throws Exception {
        Connection app = connect("calmony_app");
        Connection doc = connect("clinician");
        LocalDate danaDob = LocalDate.of(1984, 2, 29);

        step = "insert";
        for (String who : new String[] {"ann", "bob", "cat"}) {
            String n = name(Character.toUpperCase(who.charAt(0)) + who.substring(1) + " Example");
            expect(update(app, INS_USER, email(who), n), 1, "insert " + who);
        }
        insertMember(doc, name("Dana Patient"), danaDob, ssn("11-2222"), 87);
        insertMember(doc, name("Eli Patient"), LocalDate.of(1990, 1, 15), ssn("33-4444"), 12);
        ok("");

        step = "lookup";
        String bobVariant = "  " + email("bob").toUpperCase().replace("EXAMPLE", "Example") + " ";
        expect(rows(app, LOOKUP, bobVariant), list(row(name("Bob Example"))), "lookup bob");
        expect(rows(app, LOOKUP, email("nobody")), list(), "miss");
        String digits = ssn("11-2222").replace("-", "");
        expect(rows(doc, "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = ?", digits),
            list(row(name("Dana Patient"), danaDob, 87)), "lookup dana");
        try (Connection intake = connect("intake");
             PreparedStatement ps = intake.prepareStatement("SELECT id, legal_name FROM phi.member_profile WHERE ssn = ?")) {
            ps.setString(1, digits);
            ResultSet rs = ps.executeQuery();
            expect(rs.next(), true, "intake may search");
            expect(isEnvelope(rs.getBytes(2)), true, "intake reads ciphertext");
            expect(rs.next(), false, "one row");
        }
        ok("");

        step = "update";
        expect(update(app, "UPDATE users SET name = ? WHERE email = ?", name("Bob Updated"), email("bob")), 1, "name");
        expect(update(app, "UPDATE users SET email = ? WHERE email = ?", email("cat2"), email("cat")), 1, "email");
        expect(rows(app, LOOKUP, email("cat2")), list(row(name("Cat Example"))), "new email");
        expect(update(doc, "UPDATE phi.member_profile SET risk_score = ? WHERE ssn = ?", 88, ssn("11-2222")), 1, "risk");
        ok("");

        step = "delete";
        expect(update(app, "DELETE FROM users WHERE email = ?", email("ann")), 1, "ann");
        expect(update(doc, "DELETE FROM phi.member_profile WHERE ssn = ?", ssn("33-4444")), 1, "eli");
        ok("");

        step = "read_plaintext";
        expect(rows(app, "SELECT email, name FROM users ORDER BY id"),
            list(row(email("bob"), name("Bob Updated")), row(email("cat2"), name("Cat Example"))), "users");
        try (Statement st = doc.createStatement()) {
            expect(collect(st.executeQuery("SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile")),
                list(row(name("Dana Patient"), danaDob, ssn("11-2222"), 88)), "member_profile");
        }
        ok("");

        // setFetchSize in a transaction: pgjdbc reads through a protocol
        // portal, an Execute with a row limit per batch (PortalSuspended
        // between them), on both the plain Statement and the prepared path.
        step = "fetch_size";
        app.setAutoCommit(false);
        try (PreparedStatement ps = app.prepareStatement("SELECT email, name FROM users WHERE email <> ? ORDER BY id")) {
            ps.setFetchSize(1);
            ps.setString(1, email("nobody"));
            expect(collect(ps.executeQuery()),
                list(row(email("bob"), name("Bob Updated")), row(email("cat2"), name("Cat Example"))), "fetch size 1");
        }
        try (Statement st = app.createStatement()) {
            st.setFetchSize(1);
            expect(collect(st.executeQuery("SELECT email, name FROM users ORDER BY id")),
                list(row(email("bob"), name("Bob Updated")), row(email("cat2"), name("Cat Example"))), "statement fetch size 1");
        }
        app.commit();
        app.setAutoCommit(true);
        ok("");

        step = "read_ciphertext";
        try (Connection dba = connect("dba"); Statement st = dba.createStatement()) {
            ResultSet rs = st.executeQuery("SELECT email, name FROM users ORDER BY id");
            int n = 0;
            while (rs.next()) {
                n++;
                expect(isEnvelope(rs.getBytes(1)), true, "email is an envelope");
                String nm = rs.getString(2);
                expect(nm.startsWith("pgv1:") && plaintextFree(nm), true, "name is an envelope");
            }
            expect(n, 2, "dba sees the rows");
            rs = st.executeQuery("SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile");
            expect(rs.next(), true, "a member row");
            for (int i = 1; i <= 4; i++) {
                byte[] b = rs.getBytes(i);
                expect(isEnvelope(b) && plaintextFree(new String(b, "ISO-8859-1")), true, "member_profile envelope");
            }
        }
        ok("");

        step = "transaction_rollback";
        app.setAutoCommit(false);
        expect(update(app, INS_USER, email("tx"), name("Tx Rolled Back")), 1, "insert in tx");
        expect(rows(app, LOOKUP, email("tx")), list(row(name("Tx Rolled Back"))), "own write");
        expect(update(app, "UPDATE users SET name = ? WHERE email = ?", name("Bob In Tx"), email("bob")), 1, "update");
        app.rollback();
        app.setAutoCommit(true);
        expect(rows(app, "SELECT count(*) FROM users WHERE email = ?", email("tx")), list(row(0L)), "rolled back");
        expect(rows(app, LOOKUP, email("bob")), list(row(name("Bob Updated"))), "bob");
        doc.setAutoCommit(false);
        insertMember(doc, name("Fay Rolled Back"), LocalDate.of(2001, 7, 4), ssn("55-6666"), 5);
        doc.rollback();
        doc.setAutoCommit(true);
        expect(rows(doc, "SELECT count(*) FROM phi.member_profile WHERE ssn = ?", ssn("55-6666")), list(row(0L)), "member");
        ok("");

        step = "prepared_many";
        // prepareThreshold is 5 (the default): the first executions use the
        // unnamed statement, from the fifth on a named server statement
        // (S_n), and results of known types come back in binary.
        try (PreparedStatement ins = app.prepareStatement(INS_USER);
             PreparedStatement look = app.prepareStatement(LOOKUP)) {
            expect(ins.unwrap(PGStatement.class).getPrepareThreshold(), 5, "default prepareThreshold");
            for (int i = 0; i < PREPARED_RUNS; i++) {
                ins.setString(1, email("p" + i));
                ins.setString(2, name("Prepared " + i));
                expect(ins.executeUpdate(), 1, "prepared insert " + i);
            }
            for (int i = 0; i < PREPARED_RUNS; i++) {
                look.setString(1, email("P" + i).toUpperCase());
                expect(collect(look.executeQuery()), list(row(name("Prepared " + i))), "prepared lookup " + i);
            }
            expect(ins.unwrap(PGStatement.class).isUseServerPrepare(), true, "insert uses a server statement");
            expect(look.unwrap(PGStatement.class).isUseServerPrepare(), true, "lookup uses a server statement");
        }
        try (PreparedStatement m = doc.prepareStatement(
                 "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = ?")) {
            for (int i = 0; i < 10; i++) {
                m.setString(1, i % 2 == 0 ? digits : ssn("11-2222"));
                expect(collect(m.executeQuery()), list(row(name("Dana Patient"), danaDob, 88)), "member lookup " + i);
            }
        }
        List<List<Object>> named = rows(app,
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'S\\_%' AND statement LIKE '%users%'");
        long n = (Long) named.get(0).get(0);
        expect(n >= 2, true, "named server statements on the connection (" + n + ")");
        List<List<Object>> docNamed = rows(doc,
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'S\\_%' AND statement LIKE '%member_profile%'");
        expect((Long) docNamed.get(0).get(0) >= 1L, true, "named member_profile statement");
        ok(", \"server_prepared\": " + n);

        step = "pipeline_error";
        // executeBatch sends the whole batch before reading any result, with
        // one Sync at the end: in autocommit mode the batch is one implicit
        // transaction, so an error in the middle rolls back the statements
        // before it and skips the ones after it (as against PostgreSQL).
        // A batch of statements with one pgveil refuses (at Parse):
        try (Statement st = app.createStatement()) {
            st.addBatch("INSERT INTO users (email, name) VALUES ('" + email("pipe1") + "', '" + name("Pipe One") + "')");
            st.addBatch(REFUSED_WRITE);
            st.addBatch("INSERT INTO users (email, name) VALUES ('" + email("pipe2") + "', '" + name("Pipe Two") + "')");
            try {
                st.executeBatch();
                throw new AssertionError("batch did not fail");
            } catch (BatchUpdateException e) {
                expect(e.getSQLState(), "0A000", "refused in the middle: " + e.getMessage());
                // Rolled back with the implicit transaction: pgjdbc reports
                // every statement as failed (PostgreSQL directly: the same).
                expect(e.getUpdateCounts(), new int[] {Statement.EXECUTE_FAILED, Statement.EXECUTE_FAILED,
                    Statement.EXECUTE_FAILED}, "update counts");
            }
        }
        // A prepared batch with a duplicate key in the middle (PostgreSQL's
        // own error, at Execute). pgjdbc describes the statement before a
        // batch and insists that ParameterDescription repeats the types it
        // declared (varchar for setString); pgveil reports the policy's type
        // (text) instead, so with the default stringtype=varchar the batch
        // fails in the driver (a known pgveil bug, see docs/testing.md).
        // Until that is fixed, prepared batches run on a connection with
        // stringtype=unspecified.
        Connection batcher = connect("calmony_app", "&stringtype=unspecified");
        long bobId = (Long) rows(app, "SELECT id FROM users WHERE email = ?", email("bob")).get(0).get(0);
        try (PreparedStatement ps = batcher.prepareStatement("INSERT INTO users (id, email, name) VALUES (?, ?, ?)")) {
            Object[][] batch = {
                {900001L, email("pipe1"), name("Pipe One")},
                {bobId, email("pipe2"), name("Pipe Two")},
                {900003L, email("pipe3"), name("Pipe Three")},
            };
            for (Object[] b : batch) {
                ps.setLong(1, (Long) b[0]);
                ps.setString(2, (String) b[1]);
                ps.setString(3, (String) b[2]);
                ps.addBatch();
            }
            try {
                ps.executeBatch();
                throw new AssertionError("batch did not fail");
            } catch (BatchUpdateException e) {
                expect(e.getSQLState(), "23505", "duplicate key in the middle: " + e.getMessage());
            }
        }
        expect(rows(app, "SELECT count(*) FROM users WHERE email = ANY(?)",
                app.createArrayOf("text", new String[] {email("pipe1"), email("pipe2"), email("pipe3")})),
            list(row(0L)), "a failed batch leaves nothing behind");
        ok("");

        step = "usable_after_error";
        expect(rows(app, LOOKUP, email("bob")), list(row(name("Bob Updated"))), "lookup after the refused batch");
        try (PreparedStatement ps = batcher.prepareStatement(INS_USER)) {
            ps.setString(1, email("pipe1"));
            ps.setString(2, name("Pipe One"));
            ps.addBatch();
            ps.setString(1, email("pipe3"));
            ps.setString(2, name("Pipe Three"));
            ps.addBatch();
            expect(ps.executeBatch(), new int[] {1, 1}, "batch after the duplicate key");
        }
        expect(rows(batcher, LOOKUP, email("pipe3")), list(row(name("Pipe Three"))), "lookup after the errors");
        ok("");
        batcher.close();
        app.close();
        doc.close();
    }
}
