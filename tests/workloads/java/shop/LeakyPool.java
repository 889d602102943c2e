package shop;

import java.util.concurrent.TimeUnit;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.impl.client.HttpClientBuilder;
import org.apache.http.impl.client.HttpClients;
import org.apache.http.impl.conn.PoolingHttpClientConnectionManager;

/**
 * A service calling an HTTP peer through Apache HttpClient 4's bounded pool
 * (tests/test_pool.py). Usage: java shop.LeakyPool PORT leaky|healthy POOL_SIZE WORKERS
 */
public final class LeakyPool {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        boolean leaky = args[1].equals("leaky");
        int pool = Integer.parseInt(args[2]);
        int workers = Integer.parseInt(args[3]);

        PoolingHttpClientConnectionManager cm = new PoolingHttpClientConnectionManager();
        cm.setMaxTotal(pool);
        cm.setDefaultMaxPerRoute(pool);
        HttpClientBuilder builder = HttpClients.custom().setConnectionManager(cm);
        if (!leaky) {
            // A healthy client also closes idle pooled connections before the
            // server's idle timeout does (0.5 s): none sits in CLOSE_WAIT.
            builder.evictIdleConnections(150, TimeUnit.MILLISECONDS);
        }
        CloseableHttpClient http = builder.build();
        OrderService svc = new OrderService(http, "http://127.0.0.1:" + port + "/prices", leaky);

        for (int i = 1; i <= workers; i++) {
            Thread t = new Thread(() -> {
                while (true) {
                    try {
                        svc.fetchPrices();
                        Thread.sleep(50);
                    } catch (Exception e) {
                        System.err.println(Thread.currentThread().getName() + ": " + e);
                    }
                }
            }, "seed-worker-" + i);
            t.start();
        }
        while (true) {
            Thread.sleep(2000);
            System.out.println("pool " + cm.getTotalStats());
        }
    }
}
