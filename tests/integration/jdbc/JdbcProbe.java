// Used by test_tls.py: connects with the PostgreSQL JDBC driver (Debian's
// libpostgresql-jdbc-java) to the URL given, runs one query and prints its result, or the
// driver's error message. Usage: java -cp postgresql.jar:DIR JdbcProbe URL USER PASSWORD
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class JdbcProbe {
  public static void main(String[] args) {
    try (Connection c = DriverManager.getConnection(args[0], args[1], args[2]);
         Statement s = c.createStatement();
         ResultSet r = s.executeQuery("SELECT 41 + 1")) {
      r.next();
      System.out.println("result=" + r.getInt(1));
    } catch (SQLException e) {
      System.out.println("error=" + e.getSQLState() + " " + e.getMessage());
      System.exit(1);
    }
  }
}
