package shop;

import java.io.IOException;
import org.apache.http.client.methods.CloseableHttpResponse;
import org.apache.http.client.methods.HttpGet;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.util.EntityUtils;

/** Application code: the frame the classifier should point at. */
public final class OrderService {
    private final CloseableHttpClient http;
    private final String url;
    private final boolean leaky;

    public OrderService(CloseableHttpClient http, String url, boolean leaky) {
        this.http = http;
        this.url = url;
        this.leaky = leaky;
    }

    public int fetchPrices() throws IOException {
        CloseableHttpResponse resp = http.execute(new HttpGet(url));
        int status = resp.getStatusLine().getStatusCode();
        if (!leaky) {
            EntityUtils.consume(resp.getEntity()); // returns the connection to the pool
        }
        // leaky: the response is never consumed or closed, so the leased
        // connection never goes back; the server's idle close leaves it in CLOSE_WAIT.
        return status;
    }
}
