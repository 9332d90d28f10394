//! What every Flight server of weir (instance, service host, control endpoint) writes the same
//! way: the associated stream types (`flight_stream_types!()`) and the methods it does not offer,
//! answered with `UNIMPLEMENTED` (`flight_unimplemented!(do_get, do_put)` inside an
//! `impl FlightService for ...` block writes those methods).

/// Writes the named `FlightService` methods, each answering `Status::unimplemented(NAME)`. Used
/// inside a `#[tonic::async_trait] impl FlightService for X` block that declares the associated
/// stream types. The methods are written in the form `async_trait` expands to, since that
/// attribute runs before this macro does.
macro_rules! flight_unimplemented {
    ($($method:ident),+ $(,)?) => {
        $( $crate::unimplemented::flight_unimplemented!(@one $method); )+
    };
    (@one handshake) => {
        $crate::unimplemented::flight_unimplemented!(@fn handshake,
            tonic::Streaming<arrow_flight::HandshakeRequest>, Self::HandshakeStream);
    };
    (@one list_flights) => {
        $crate::unimplemented::flight_unimplemented!(@fn list_flights,
            arrow_flight::Criteria, Self::ListFlightsStream);
    };
    (@one get_flight_info) => {
        $crate::unimplemented::flight_unimplemented!(@fn get_flight_info,
            arrow_flight::FlightDescriptor, arrow_flight::FlightInfo);
    };
    (@one poll_flight_info) => {
        $crate::unimplemented::flight_unimplemented!(@fn poll_flight_info,
            arrow_flight::FlightDescriptor, arrow_flight::PollInfo);
    };
    (@one get_schema) => {
        $crate::unimplemented::flight_unimplemented!(@fn get_schema,
            arrow_flight::FlightDescriptor, arrow_flight::SchemaResult);
    };
    (@one do_get) => {
        $crate::unimplemented::flight_unimplemented!(@fn do_get,
            arrow_flight::Ticket, Self::DoGetStream);
    };
    (@one do_put) => {
        $crate::unimplemented::flight_unimplemented!(@fn do_put,
            tonic::Streaming<arrow_flight::FlightData>, Self::DoPutStream);
    };
    (@one do_exchange) => {
        $crate::unimplemented::flight_unimplemented!(@fn do_exchange,
            tonic::Streaming<arrow_flight::FlightData>, Self::DoExchangeStream);
    };
    (@one do_action) => {
        $crate::unimplemented::flight_unimplemented!(@fn do_action,
            arrow_flight::Action, Self::DoActionStream);
    };
    (@one list_actions) => {
        $crate::unimplemented::flight_unimplemented!(@fn list_actions,
            arrow_flight::Empty, Self::ListActionsStream);
    };
    (@fn $method:ident, $req:ty, $resp:ty) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _: tonic::Request<$req>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = std::result::Result<tonic::Response<$resp>, tonic::Status>,
                    > + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(tonic::Status::unimplemented(stringify!($method))) })
        }
    };
}

/// Writes the associated stream types of a `FlightService` impl: every method answers with a
/// boxed stream of its message type ([`crate::flight::FlightStream`]).
macro_rules! flight_stream_types {
    () => {
        type HandshakeStream = $crate::flight::FlightStream<arrow_flight::HandshakeResponse>;
        type ListFlightsStream = $crate::flight::FlightStream<arrow_flight::FlightInfo>;
        type DoGetStream = $crate::flight::FlightStream<arrow_flight::FlightData>;
        type DoPutStream = $crate::flight::FlightStream<arrow_flight::PutResult>;
        type DoExchangeStream = $crate::flight::FlightStream<arrow_flight::FlightData>;
        type DoActionStream = $crate::flight::FlightStream<arrow_flight::Result>;
        type ListActionsStream = $crate::flight::FlightStream<arrow_flight::ActionType>;
    };
}

pub(crate) use flight_stream_types;
pub(crate) use flight_unimplemented;
